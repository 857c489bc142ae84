"""Run the app under uvicorn (one or several worker processes).

Workers are separate processes, so the settings travel through the environment as JSON and
each worker builds its own app with `create_app_from_env`; the store is shared, and each
worker tails it for the events and items the others accepted.
"""

from __future__ import annotations

import os

from shoprank.errors import ShoprankError
from shoprank.serving.settings import ENV_JSON, Settings


def check(settings: Settings) -> None:
    """Fail fast, with one line, before uvicorn starts workers."""
    if not (settings.model_dir / "config.json").exists():
        raise ShoprankError(f"{settings.model_dir}: not a saved model (no config.json)")
    if not (settings.data_dir / "dataset.json").exists():
        raise ShoprankError(f"{settings.data_dir}: not a dataset folder (no dataset.json)")
    if settings.reports_dir is not None and not settings.reports_dir.exists():
        settings.reports_dir.mkdir(parents=True, exist_ok=True)


def run(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        log_level: str = "info", access_log: bool = True) -> None:
    import uvicorn

    check(settings)
    os.environ[ENV_JSON] = settings.to_json()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        # before any worker imports prometheus_client: their samples go to files a scrape sums
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="shoprank-metrics-")
    uvicorn.run("shoprank.serving.app:create_app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=10)
