"""Self-contained HTML reports (plots embedded as base64 PNG, no network needed to view)."""
