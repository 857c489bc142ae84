"""The built-in synthetic shop: a realistic catalog and event log with known ground truth.

Why: every model, metric and valuation method needs a shop where the right answer is
known. Users have latent tastes, items a latent quality, every interaction a noise flag
and every relevance judgment a true grade, so that an evaluation can check a model (or a
data-valuation method) against the truth instead of against other noisy data.

Design notes:
- Deterministic by seed; English and Chinese share every random draw (the language only
  changes the surface text), so `lang="en"` and `lang="zh"` with one seed give the same
  latent shop and the same ground truth.
- Vectorised with numpy: Python loops run over categories and queries only, never over
  items or events (the large preset, 100k items and 1M events, synthesises in ~10 s; the
  row-wise validation in `Dataset.from_frames` takes longer than that).
- Sessions: a user picks a category from their taste (or a search query), browses a
  candidate listing drawn by popularity, views the items with the highest noisy utility
  and moves down the funnel view -> click -> cart -> purchase with probabilities that
  increase with the latent utility (and, for search sessions, with the query relevance).
- Sources differ in quality and cost: web/app/email are clean, partner_feed swaps a share
  of item ids for random ones, bot adds pure-noise clicks (random users, random items).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoprank.data.dataset import Dataset
from shoprank.data.schema import Col
from shoprank.errors import ShoprankError

PROVENANCE = "shoprank synthetic shop"
TRUTH_DIR = "truth"
LANGS = ("en", "zh")

# --------------------------------------------------------------------------------------
# Vocabularies: every entry is an (English, Chinese) pair so both languages share draws.
# --------------------------------------------------------------------------------------

Pair = tuple[str, str]


def _pairs(spec: str) -> tuple[Pair, ...]:
    """'a|甲; b|乙' -> (('a', '甲'), ('b', '乙'))."""
    out = []
    for part in spec.split(";"):
        en, zh = part.strip().split("|")
        out.append((en.strip(), zh.strip()))
    return tuple(out)


def _brands(spec: str) -> tuple[tuple[str, str, int], ...]:
    """'Acme|艾克美|1; ...' -> brands with a price tier (0 budget, 1 mid, 2 premium)."""
    out = []
    for part in spec.split(";"):
        en, zh, tier = part.strip().split("|")
        out.append((en.strip(), zh.strip(), int(tier)))
    return tuple(out)


def _types(*specs: tuple[str, str]) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """Product types: canonical name first, then synonyms, in both languages."""
    return tuple((tuple(en.split("|")), tuple(zh.split("|"))) for en, zh in specs)


@dataclass(frozen=True)
class _Slot:
    """A category-specific attribute (size, material, ...)."""

    key: Pair
    values: tuple[Pair, ...]
    fmt: Pair = ("{}", "{}")  # how a value is written in titles and queries
    in_title: bool = True
    zh_prefix: bool = False  # Chinese titles put it before the product type (男士 ...)


@dataclass(frozen=True)
class _Category:
    key: str
    name: Pair
    weight: float  # relative size / popularity
    price: tuple[float, float]  # median price (USD) and log-sd
    use: Pair
    types: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    brands: tuple[tuple[str, str, int], ...]
    features: tuple[Pair, ...]
    colors: tuple[int, ...]  # indices into _PALETTE; empty: items have no colour
    extras: tuple[_Slot, ...] = ()


_PALETTE: tuple[Pair, ...] = _pairs(
    "black|黑色; white|白色; grey|灰色; navy|藏青色; red|红色; blue|蓝色; green|绿色; "
    "beige|米色; pink|粉色; brown|棕色; silver|银色; gold|金色"
)
_COLOR_POP = np.array([0.22, 0.14, 0.12, 0.08, 0.07, 0.09, 0.06, 0.05, 0.06, 0.04, 0.05, 0.02])
BK, WH, GY, NV, RD, BL, GN, BG, PK, BR, SV, GD = range(12)

_GENDER = _Slot(("gender", "性别"), _pairs("Men's|男士; Women's|女士; Unisex|男女同款"), zh_prefix=True)
_KEYS_ZH = {"type": "品类", "feature": "特点", "color": "颜色"}

_CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "shoes", ("shoes", "鞋靴"), 1.2, (80.0, 0.35),
        ("hiking, running and everyday walks", "登山、跑步和日常出行"),
        _types(("hiking shoes|trail shoes|hiking boots", "登山鞋|徒步鞋|户外鞋"),
               ("running shoes|trainers|sneakers", "跑步鞋|运动鞋|跑鞋"),
               ("ankle boots|boots|chelsea boots", "短靴|靴子|切尔西靴"),
               ("sandals|slides|flip-flops", "凉鞋|拖鞋|沙滩鞋")),
        _brands("Acme|艾克美|1; Trailpeak|峰途|2; Stride|步远|0; Northfold|北岭|2; Kuma|库玛|1"),
        _pairs("waterproof|防水; breathable|透气; lightweight|轻量; cushioned|缓震"),
        (BK, WH, GY, NV, RD, BL, BR, BG),
        (_GENDER,
         _Slot(("size", "尺码"), _pairs("7|39; 8|40; 9|41; 10|42; 11|43; 12|44"), ("Size {}", "{}码")),
         _Slot(("material", "材质"), _pairs("leather|真皮; mesh|网面; suede|麂皮; synthetic|合成革"),
               in_title=False)),
    ),
    _Category(
        "laptops", ("laptops", "笔记本电脑"), 0.8, (850.0, 0.4),
        ("work, study and travel", "办公、学习和出差"),
        _types(("laptop|notebook|notebook computer", "笔记本电脑|笔记本|手提电脑"),
               ("gaming laptop|gaming notebook|gaming pc", "游戏本|电竞本|游戏笔记本"),
               ("2-in-1 laptop|convertible laptop|tablet laptop", "二合一笔记本|翻转笔记本|平板二合一"),
               ("ultrabook|thin laptop|ultralight laptop", "超极本|轻薄本|超轻笔记本")),
        _brands("Lumen|流明|1; Corvex|科维|2; Bytecraft|字节工坊|0; Zenbyte|禅芯|1; Helix|海力|2"),
        _pairs("thin and light|轻薄; long battery life|长续航; touchscreen|触控屏; backlit keyboard|背光键盘"),
        (BK, SV, GY, BL),
        (_Slot(("screen", "屏幕尺寸"), _pairs("13-inch|13英寸; 14-inch|14英寸; 15.6-inch|15.6英寸; 16-inch|16英寸")),
         _Slot(("storage", "存储"), _pairs("256GB SSD|256GB固态; 512GB SSD|512GB固态; 1TB SSD|1TB固态")),
         _Slot(("memory", "内存"), _pairs("8GB RAM|8GB内存; 16GB RAM|16GB内存; 32GB RAM|32GB内存"))),
    ),
    _Category(
        "coffee", ("coffee", "咖啡"), 1.0, (14.0, 0.4),
        ("espresso, pour-over and French press", "意式浓缩、手冲和法压壶"),
        _types(("coffee beans|whole bean coffee|coffee bean", "咖啡豆|咖啡原豆|烘焙咖啡豆"),
               ("ground coffee|coffee grounds|filter coffee", "咖啡粉|研磨咖啡|挂耳咖啡"),
               ("instant coffee|coffee powder|soluble coffee", "速溶咖啡|即溶咖啡|冻干咖啡"),
               ("coffee capsules|coffee pods|espresso pods", "咖啡胶囊|胶囊咖啡|意式胶囊")),
        _brands("Bean & Bloom|豆语|1; Highland Roasters|高原烘焙|2; Daily Cup|每日一杯|0; "
                "Kaffa|咖法|2; Morning Ritual|晨之礼|0"),
        _pairs("organic|有机; fair trade|公平贸易; decaf|低因; single origin|单一产地"),
        (),
        (_Slot(("roast", "烘焙程度"), _pairs("light roast|浅度烘焙; medium roast|中度烘焙; dark roast|深度烘焙")),
         _Slot(("weight", "净含量"), _pairs("250g|250克; 500g|500克; 1kg|1千克"))),
    ),
    _Category(
        "skincare", ("skincare", "美妆护肤"), 1.1, (24.0, 0.5),
        ("daily morning and evening routines", "早晚日常护理"),
        _types(("moisturizer|face cream|moisturising cream", "面霜|保湿霜|乳霜"),
               ("serum|face serum|essence", "精华液|精华|肌底液"),
               ("sunscreen|sunblock|sun cream", "防晒霜|防晒乳|隔离防晒"),
               ("cleanser|face wash|facial cleanser", "洁面乳|洗面奶|洁面")),
        _brands("Lumiere|露米|2; Pure Leaf|纯叶|0; Dermalab|肌研|1; Aqua Bloom|水漾|1; Velvet Rose|丝绒玫瑰|2"),
        _pairs("fragrance-free|无香; hydrating|补水; anti-aging|抗衰老; gentle|温和"),
        (),
        (_Slot(("volume", "容量"), _pairs("30ml|30毫升; 50ml|50毫升; 100ml|100毫升; 200ml|200毫升")),
         _Slot(("skin_type", "适用肤质"),
               _pairs("dry skin|干性肌肤; oily skin|油性肌肤; sensitive skin|敏感肌肤; all skin types|所有肤质"),
               ("for {}", "{}适用"))),
    ),
    _Category(
        "tools", ("tools", "五金工具"), 0.7, (45.0, 0.6),
        ("home repairs and DIY projects", "家庭维修和DIY"),
        _types(("cordless drill|power drill|drill driver", "电钻|手电钻|充电钻"),
               ("screwdriver set|screwdriver kit|precision screwdriver", "螺丝刀套装|起子套装|精密螺丝刀"),
               ("claw hammer|hammer|framing hammer", "羊角锤|锤子|木工锤"),
               ("tool kit|tool set|toolbox", "工具箱|工具套装|家用工具组")),
        _brands("Ironclad|铁甲|2; Handyman|巧匠|0; Torque|扭力|1; Forge & Co|锻造|1; Volta|伏特|2"),
        _pairs("heavy-duty|重型; compact|小巧; ergonomic|人体工学; professional|专业级"),
        (BK, RD, BL, GN, GY),
        (_Slot(("pieces", "件数"), _pairs("1-piece|1件; 12-piece|12件; 24-piece|24件; 100-piece|100件")),
         _Slot(("material", "材质"), _pairs("steel|钢制; chrome vanadium|铬钒钢; fiberglass|玻璃纤维"),
               in_title=False)),
    ),
    _Category(
        "headphones", ("headphones", "耳机音响"), 0.9, (70.0, 0.6),
        ("commuting, workouts and music at home", "通勤、运动和居家听音乐"),
        _types(("wireless earbuds|bluetooth earbuds|true wireless earphones", "无线耳机|蓝牙耳机|真无线耳机"),
               ("over-ear headphones|headset|headphones", "头戴式耳机|耳麦|包耳式耳机"),
               ("sports earphones|workout earbuds|running earphones", "运动耳机|跑步耳机|挂耳式耳机"),
               ("bluetooth speaker|portable speaker|wireless speaker", "蓝牙音箱|便携音箱|无线音箱")),
        _brands("Sonora|声纳|2; Beatline|律动|1; Echo Lab|回声|1; Pulse|脉冲|0; Aurix|奥瑞|2"),
        _pairs("noise cancelling|降噪; waterproof|防水; long battery life|长续航; hi-fi|高保真"),
        (BK, WH, GY, NV, PK, BL),
        (_Slot(("playtime", "续航时间"), _pairs("24 hours|24小时; 36 hours|36小时; 50 hours|50小时"), in_title=False),),
    ),
    _Category(
        "kitchen", ("kitchen appliances", "厨房电器"), 0.8, (65.0, 0.5),
        ("smoothies, quick breakfasts and family dinners", "果昔、快手早餐和家庭晚餐"),
        _types(("blender|smoothie maker|countertop blender", "搅拌机|料理机|破壁机"),
               ("espresso machine|coffee maker|coffee machine", "咖啡机|意式咖啡机|全自动咖啡机"),
               ("air fryer|oil-free fryer|air fryer oven", "空气炸锅|无油炸锅|空气炸烤箱"),
               ("electric kettle|kettle|tea kettle", "电热水壶|烧水壶|电水壶")),
        _brands("Kitchora|厨悦|1; Chefmate|厨伴|0; Brava|博瓦|2; Homely|家适|0; Vesta|维斯塔|2"),
        _pairs("stainless steel|不锈钢; quiet|静音; programmable|智能预约; compact|迷你"),
        (BK, WH, SV, RD, BG),
        (_Slot(("capacity", "容量"), _pairs("1L|1升; 1.5L|1.5升; 1.7L|1.7升; 4L|4升")),
         _Slot(("power", "功率"), _pairs("800W|800瓦; 1200W|1200瓦; 1500W|1500瓦"), in_title=False)),
    ),
    _Category(
        "clothing", ("clothing", "服装"), 1.2, (75.0, 0.5),
        ("cold mornings, rainy commutes and weekend hikes", "寒冷清晨、雨天通勤和周末徒步"),
        _types(("rain jacket|raincoat|shell jacket", "冲锋衣|雨衣|硬壳外套"),
               ("down jacket|puffer jacket|down coat", "羽绒服|面包服|羽绒外套"),
               ("fleece jacket|fleece|fleece pullover", "抓绒衣|摇粒绒外套|抓绒外套"),
               ("hoodie|sweatshirt|hooded sweatshirt", "连帽卫衣|卫衣|帽衫")),
        _brands("Northfold|北岭|2; Urban Thread|城市织|0; Alpina|阿尔派|2; Cozy Co|暖丫|0; Kuma|库玛|1"),
        _pairs("waterproof|防水; windproof|防风; warm|保暖; packable|可收纳"),
        (BK, NV, GY, RD, GN, BG, PK, BL),
        (_GENDER,
         _Slot(("size", "尺码"), _pairs("S|S; M|M; L|L; XL|XL"), ("Size {}", "{}码")),
         _Slot(("material", "材质"), _pairs("polyester|涤纶; cotton|棉; nylon|尼龙; wool|羊毛"), in_title=False)),
    ),
    _Category(
        "bags", ("bags", "箱包"), 0.8, (55.0, 0.5),
        ("commuting, business trips and weekend getaways", "通勤、出差和周末旅行"),
        _types(("backpack|rucksack|daypack", "双肩包|背包|书包"),
               ("suitcase|luggage|carry-on", "行李箱|拉杆箱|登机箱"),
               ("tote bag|shoulder bag|tote", "托特包|单肩包|手提包"),
               ("laptop bag|laptop sleeve|briefcase", "电脑包|电脑内胆包|公文包")),
        _brands("Nomad|游牧|1; Carryall|全能包|0; Voyageur|旅者|2; Metro|都市|0; Atlas|阿特拉斯|2"),
        _pairs("water-resistant|防泼水; anti-theft|防盗; lightweight|轻便; expandable|可扩容"),
        (BK, GY, NV, BR, BG, RD, GN),
        (_Slot(("capacity", "容量"), _pairs("20L|20升; 30L|30升; 40L|40升")),
         _Slot(("material", "材质"), _pairs("nylon|尼龙; leather|皮革; canvas|帆布; polyester|涤纶"))),
    ),
    _Category(
        "watches", ("watches", "手表"), 0.6, (120.0, 0.6),
        ("fitness tracking and everyday wear", "运动健康监测和日常佩戴"),
        _types(("smartwatch|smart watch|gps watch", "智能手表|智能腕表|GPS手表"),
               ("fitness tracker|activity tracker|fitness band", "运动手环|智能手环|健康手环"),
               ("analog watch|wristwatch|quartz watch", "石英表|腕表|指针手表"),
               ("kids smartwatch|kids watch|children's watch", "儿童手表|儿童电话手表|学生手表")),
        _brands("Chronos|时光|2; Tempo|节拍|1; Fitbeat|健拍|0; Orbit|轨迹|1; Regal|君度|2"),
        _pairs("waterproof|防水; heart rate monitoring|心率监测; GPS|GPS定位; long battery life|长续航"),
        (BK, SV, GD, PK, WH, NV),
        (_Slot(("strap", "表带"), _pairs("silicone strap|硅胶表带; leather strap|皮革表带; metal strap|金属表带")),
         _Slot(("case_size", "表盘尺寸"), _pairs("40mm|40毫米; 44mm|44毫米"), in_title=False)),
    ),
    _Category(
        "furniture", ("furniture", "家具"), 0.5, (220.0, 0.6),
        ("home offices, living rooms and small apartments", "居家办公、客厅和小户型"),
        _types(("office chair|desk chair|computer chair", "办公椅|电脑椅|转椅"),
               ("standing desk|sit-stand desk|height adjustable desk", "升降桌|电动升降桌|站立办公桌"),
               ("bookshelf|bookcase|shelving unit", "书架|书柜|置物架"),
               ("sofa|couch|loveseat", "沙发|布艺沙发|双人沙发")),
        _brands("Oakline|橡木坊|1; Nordhem|北欧家|2; Simplo|简朴|0; Habitat|栖居|1; Loftwood|阁楼木|2"),
        _pairs("ergonomic|人体工学; adjustable|可调节; solid wood|实木; modern|现代简约"),
        (BK, WH, GY, BR, BG, GN),
        (_Slot(("material", "材质"), _pairs("oak|橡木; walnut|胡桃木; metal|金属; fabric|布艺")),
         _Slot(("width", "宽度"), _pairs("80cm|80厘米; 120cm|120厘米; 160cm|160厘米"), in_title=False)),
    ),
    _Category(
        "toys", ("toys", "玩具"), 0.7, (25.0, 0.6),
        ("creative play and family game nights", "创意游戏和亲子时光"),
        _types(("building blocks|building bricks|construction set", "积木|拼插积木|积木套装"),
               ("jigsaw puzzle|puzzle|1000-piece puzzle", "拼图|益智拼图|千片拼图"),
               ("plush toy|stuffed animal|teddy bear", "毛绒玩具|公仔|玩偶"),
               ("remote control car|rc car|toy car", "遥控车|遥控赛车|玩具车")),
        _brands("Tinkerly|趣搭|1; Playroom|游戏屋|0; Brickworks|砖工坊|2; Snuggle|抱抱|0; Zoomies|飞驰|1"),
        _pairs("educational|益智; eco-friendly|环保; collectible|收藏级; glow-in-the-dark|夜光"),
        (RD, BL, GN, PK, BR, WH),
        (_Slot(("age", "适用年龄"), _pairs("Ages 3+|3岁以上; Ages 6+|6岁以上; Ages 8+|8岁以上; Ages 14+|14岁以上")),),
    ),
    _Category(
        "books", ("books", "图书"), 0.9, (18.0, 0.35),
        ("cozy evenings, gifts and travel", "悠闲夜晚、送礼和旅途"),
        _types(("cookbook|recipe book|cooking book", "菜谱|食谱|烹饪书"),
               ("novel|fiction book|mystery novel", "小说|长篇小说|悬疑小说"),
               ("children's book|kids book|picture book", "童书|儿童绘本|绘本"),
               ("travel guide|guidebook|travel book", "旅行指南|旅游攻略|旅行手册")),
        _brands("Pagehouse|书页社|1; Inkwell Press|墨泉出版社|2; Lantern Books|灯笼图书|0; "
                "Meridian|子午出版社|1; Folio|对开本|2"),
        _pairs("bestselling|畅销; illustrated|插图版; hardcover|精装; collector's edition|典藏版"),
        (),
        (_Slot(("language", "语言"), _pairs("English|英文版; Chinese|中文版; bilingual|中英双语"),
               ("{} Edition", "{}")),
         _Slot(("pages", "页数"), _pairs("200|200页; 350|350页; 500|500页"), in_title=False)),
    ),
    _Category(
        "pets", ("pet supplies", "宠物用品"), 0.7, (30.0, 0.5),
        ("happy, healthy dogs and cats", "让猫狗健康快乐"),
        _types(("dog food|dog kibble|dry dog food", "狗粮|犬粮|全价狗粮"),
               ("cat litter|kitty litter|clumping litter", "猫砂|豆腐猫砂|膨润土猫砂"),
               ("pet bed|dog bed|cat bed", "宠物窝|狗窝|猫窝"),
               ("cat toy|cat teaser|cat wand", "猫玩具|逗猫棒|猫咪玩具")),
        _brands("Pawsome|爪爪|1; Happy Tail|快乐尾巴|0; Wildpaw|野爪|2; Purrfect|喵趣|1; Nutripet|营养宠|2"),
        _pairs("grain-free|无谷; natural|天然; washable|可水洗; durable|耐用"),
        (),
        (_Slot(("size", "规格"), _pairs("small|小号; medium|中号; large|大号")),
         _Slot(("weight", "重量"), _pairs("2kg|2公斤; 5kg|5公斤; 10kg|10公斤"), in_title=False)),
    ),
    _Category(
        "phones", ("phones & accessories", "手机数码"), 1.0, (45.0, 0.9),
        ("calls, photos and staying charged on the go", "通话、拍照和随时充电"),
        _types(("smartphone|cell phone|mobile phone", "智能手机|手机|移动电话"),
               ("phone case|phone cover|protective case", "手机壳|保护壳|手机套"),
               ("phone charger|fast charger|usb-c charger", "充电器|快充头|充电头"),
               ("power bank|portable charger|battery pack", "充电宝|移动电源|便携充电宝")),
        _brands("Novaphone|新星|1; Pixelon|像素|2; Voltix|沃迪|0; Kairo|凯罗|1; Aperture|光圈|2"),
        _pairs("fast charging|快充; slim|超薄; rugged|三防; magnetic|磁吸"),
        (BK, WH, BL, PK, GN, SV, GD),
    ),
)

N_FEATURES = 4  # every category has exactly four features (user preference is modulo this)
MAX_EXTRAS = 3
# Attribute matrix columns (item attributes and query constraints share the layout).
S_FEATURE, S_COLOR, S_BRAND = 0, 1, 2
N_SLOTS = 3 + MAX_EXTRAS

_MODEL_A = ("Aero", "Nova", "Terra", "Flex", "Ultra", "Prime", "Zen", "Urban", "Summit", "Echo",
            "Core", "Swift", "Luna", "Vertex", "Pulse", "Orion", "Halo", "Trailrunner")
_MODEL_B = ("", " Pro", " Max", " Lite", " X", " 2", " 3", " Plus", " Air", " One", " S", " 5")
_SMALL_WORDS = {"and", "of", "for", "in", "with", "the", "a"}

# Sources: (name, cost per record, session share). Noise rates come from the config.
_CHANNELS = ("web", "app", "email", "partner_feed")
_CHANNEL_SHARE = np.array([0.50, 0.33, 0.05, 0.12])
_COST = {"web": 0.002, "app": 0.003, "email": 0.006, "partner_feed": 0.0005, "bot": 0.0002}
WEB, APP, EMAIL, PARTNER, BOT = range(5)
SOURCES = (*_CHANNELS, "bot")
EVENTS = ("view", "click", "cart", "purchase")

# Utility weights: preference = taste + attribute match + brand tier + price + quality.
W_TASTE, W_COLOR, W_FEATURE, W_TIER, W_QUALITY = 1.0, 0.9, 0.9, 0.6, 1.0
# Funnel logits: p = sigmoid(a + b * (utility - centre [+ relevance]) [+ channel boost]); the
# centre is about the mean utility of viewed items, giving ~30% click, ~35% cart, ~55% buy.
_A_CLICK, _A_CART, _A_BUY, _B_FUNNEL, _U_CENTER = -1.1, -1.45, -0.8, 0.8, 1.0
_REL_VIEW, _REL_CLICK = 1.2, 0.7  # search relevance weight in browsing and clicking
_EMAIL_BOOST, _APP_BOOST = 0.6, 0.3
_CANDIDATES, _MAX_VIEWS = 24, 8
_HOUR_W = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.2, 2.5, 2.6, 2.8,
                    3.2, 3.0, 2.6, 2.5, 2.6, 2.9, 3.3, 3.8, 4.2, 4.0, 3.0, 1.8])
_LABELER_COST = (0.10, 0.04)  # per judgment: accurate, careless


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


@dataclass
class SynthConfig:
    """Size and behaviour of the synthetic shop. Mutable so the CLI can `--set` fields;
    `synthesize` re-checks and coerces the values."""

    n_items: int = 2000
    n_users: int = 1000
    n_events: int = 50_000  # target; the result is within a fraction of a percent
    n_queries: int = 300
    lang: str = "en"
    seed: int = 0
    cold_start_frac: float = 0.1  # items created in the last ~15% of the time range
    start: str = "2024-01-01"
    days: int = 90
    search_frac: float = 0.3  # sessions that start from a search query
    bot_click_frac: float = 0.1  # share of all clicks that come from the bot source
    partner_noise: float = 0.25  # partner_feed rows whose item id is replaced at random
    synonym_frac: float = 0.3  # queries that use a synonym of the product type
    typo_frac: float = 0.15  # queries with a character swap/drop/duplication
    judged_min: int = 20  # candidates judged per query
    judged_max: int = 40
    n_labelers: int = 4  # the last one is careless
    careless_rate: float = 0.5  # share of the careless labeler's judgments that are corrupted
    slip_rate: float = 0.04  # accurate labelers' share of off-by-one grades
    second_judgment_frac: float = 0.2  # pairs judged by a second labeler
    preset_name: str = "custom"  # set by `preset`; part of the default dataset name
    name: str = ""  # dataset name; default synth-{preset_name}-{lang}-s{seed}

    @classmethod
    def preset_names(cls) -> list[str]:
        return list(_PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SynthConfig:
        """A named size ("tiny", "small", "large"), optionally with fields overridden."""
        if name not in _PRESETS:
            raise ShoprankError(f"unknown synth preset {name!r}; known: {list(_PRESETS)}")
        cfg = cls(preset_name=name, **_PRESETS[name])
        for k, v in overrides.items():
            if k not in {f.name for f in fields(cls)}:
                raise ShoprankError(f"unknown synth setting {k!r}")
            setattr(cfg, k, v)
        return cfg.checked()

    @property
    def dataset_name(self) -> str:
        return self.name or f"synth-{self.preset_name}-{self.lang}-s{self.seed}"

    def checked(self) -> SynthConfig:
        """Coerce field types (the CLI sets JSON-parsed values) and check ranges."""
        for f in fields(self):
            v, default = getattr(self, f.name), type(f.default)
            try:
                if default is int and not isinstance(v, bool):
                    fv = float(v)
                    if fv != int(fv):
                        raise ValueError
                    v = int(fv)
                elif default is float:
                    v = float(v)
                elif default is str:
                    v = str(v)
            except (TypeError, ValueError):
                raise ShoprankError(f"synth setting {f.name}={v!r} is not a {default.__name__}") from None
            setattr(self, f.name, v)
        if self.lang not in LANGS:
            raise ShoprankError(f"synth lang must be one of {LANGS}, got {self.lang!r}")
        for k in ("n_items", "n_users", "n_events", "n_queries", "days", "judged_min"):
            if getattr(self, k) < 1:
                raise ShoprankError(f"synth setting {k} must be >= 1")
        if self.judged_max < self.judged_min:
            raise ShoprankError("synth setting judged_max must be >= judged_min")
        if self.n_labelers < 2:
            raise ShoprankError("synth setting n_labelers must be >= 2 (one of them is careless)")
        for k in ("cold_start_frac", "search_frac", "partner_noise", "synonym_frac", "typo_frac",
                  "careless_rate", "slip_rate", "second_judgment_frac"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ShoprankError(f"synth setting {k} must be in [0, 1]")
        if not 0.0 <= self.bot_click_frac < 1.0:
            raise ShoprankError("synth setting bot_click_frac must be in [0, 1)")
        try:
            pd.Timestamp(self.start)
        except ValueError:
            raise ShoprankError(f"synth setting start={self.start!r} is not a date") from None
        return self


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_items": 200, "n_users": 100, "n_events": 3_000, "n_queries": 40},
    "small": {"n_items": 2_000, "n_users": 1_000, "n_events": 60_000, "n_queries": 300},
    "large": {"n_items": 100_000, "n_users": 50_000, "n_events": 1_000_000, "n_queries": 1_000},
}


# --------------------------------------------------------------------------------------
# The latent world
# --------------------------------------------------------------------------------------


@dataclass
class _World:
    """Latent arrays of one shop (internal indices everywhere)."""

    lang: int  # 0 en, 1 zh
    t_start: int  # epoch seconds
    t_end: int
    # items
    cat: np.ndarray
    typ: np.ndarray  # global type id (contiguous per category)
    attrs: np.ndarray  # (n_items, N_SLOTS) local value index or -1
    tier: np.ndarray
    price_rel: np.ndarray  # log(base price / category median)
    price: np.ndarray  # shown price (currency of the language)
    quality: np.ndarray
    popularity: np.ndarray  # exposure weight in listings
    created: np.ndarray  # epoch seconds
    cold: np.ndarray
    # users
    taste: np.ndarray  # (n_users, n_categories)
    pref_color: np.ndarray
    pref_feature: np.ndarray
    pref_tier: np.ndarray
    sensitivity: np.ndarray
    activity: np.ndarray


def _type_offsets() -> np.ndarray:
    return np.cumsum([0] + [len(c.types) for c in _CATEGORIES])


def _n_values() -> np.ndarray:
    """(n_categories, N_SLOTS) number of values per slot (0: the slot does not exist)."""
    out = np.zeros((len(_CATEGORIES), N_SLOTS), dtype=np.int64)
    for k, c in enumerate(_CATEGORIES):
        assert len(c.features) == N_FEATURES
        out[k, S_FEATURE] = N_FEATURES
        out[k, S_COLOR] = len(c.colors)
        out[k, S_BRAND] = len(c.brands)
        for j, s in enumerate(c.extras):
            out[k, 3 + j] = len(s.values)
    return out


def _categorical(rng: np.random.Generator, weights: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    """Draws from one discrete distribution via inverse CDF (cheaper than rng.choice)."""
    cum = np.cumsum(weights, dtype=np.float64)
    idx = np.searchsorted(cum, rng.random(size) * cum[-1], side="right")
    return np.minimum(idx, len(weights) - 1)


def _make_items(rng: np.random.Generator, cfg: SynthConfig, t0: int, t1: int) -> dict[str, np.ndarray]:
    n, n_cat = cfg.n_items, len(_CATEGORIES)
    cw = np.array([c.weight for c in _CATEGORIES])
    cat = _categorical(rng, cw, n)
    n_types = np.array([len(c.types) for c in _CATEGORIES])
    typ = _type_offsets()[cat] + np.floor(rng.random(n) * n_types[cat]).astype(np.int64)
    nv = _n_values()
    u = rng.random((n, N_SLOTS))
    attrs = np.where(nv[cat] > 0, np.floor(u * nv[cat]).astype(np.int64), -1)
    colors = np.full((n_cat, max(len(c.colors) for c in _CATEGORIES)), -1, dtype=np.int64)
    for k, c in enumerate(_CATEGORIES):
        colors[k, : len(c.colors)] = c.colors
    has_color = attrs[:, S_COLOR] >= 0
    attrs[has_color, S_COLOR] = colors[cat[has_color], attrs[has_color, S_COLOR]]  # palette index
    tiers = np.full((n_cat, max(len(c.brands) for c in _CATEGORIES)), 1, dtype=np.int64)
    for k, c in enumerate(_CATEGORIES):
        tiers[k, : len(c.brands)] = [b[2] for b in c.brands]
    tier = tiers[cat, attrs[:, S_BRAND]]
    med = np.array([c.price[0] for c in _CATEGORIES])
    sd = np.array([c.price[1] for c in _CATEGORIES])
    price_rel = sd[cat] * rng.standard_normal(n) + 0.35 * (tier - 1)
    base = med[cat] * np.exp(price_rel)
    quality = 0.6 * rng.standard_normal(n)
    popularity = np.exp(quality + 0.8 * rng.standard_normal(n))
    cold = rng.random(n) < cfg.cold_start_frac
    span = t1 - t0
    old_created = t0 - np.floor(rng.random(n) * 730 * 86400).astype(np.int64)
    new_created = t0 + np.floor((0.85 + 0.12 * rng.random(n)) * span).astype(np.int64)
    created = np.where(cold, new_created, old_created)
    if cfg.lang == "zh":  # yuan, ending in 9
        price = np.maximum(np.floor(base * 7.0 / 10.0) * 10.0 + 9.0, 9.0)
    else:  # dollars, ending in .99
        price = np.where(base >= 5, np.floor(base) + 0.99, np.round(base, 2))
    model = np.stack([np.floor(rng.random(n) * len(_MODEL_A)), np.floor(rng.random(n) * len(_MODEL_B))], 1)
    text_u = rng.random((n, 4))  # synonym in description, optional sentences
    return {
        "cat": cat, "typ": typ, "attrs": attrs, "tier": tier, "price_rel": price_rel,
        "price": price, "quality": quality, "popularity": popularity, "created": created,
        "cold": cold, "model": model.astype(np.int64), "text_u": text_u,
    }


def _make_users(rng: np.random.Generator, cfg: SynthConfig) -> dict[str, np.ndarray]:
    n, n_cat = cfg.n_users, len(_CATEGORIES)
    cw = np.array([c.weight for c in _CATEGORIES])
    # Taste concentrated on 1-3 categories (popular ones more often), plus a little background.
    k = _categorical(rng, np.array([0.35, 0.45, 0.20]), n) + 1
    keys = np.log(cw)[None, :] + rng.gumbel(size=(n, n_cat))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    focus = rank < k[:, None]
    g = rng.gamma(1.0, size=(n, n_cat)) * focus
    g /= g.sum(axis=1, keepdims=True)
    bg = rng.gamma(0.5, size=(n, n_cat)) + 1e-9
    bg /= bg.sum(axis=1, keepdims=True)
    taste = 0.92 * g + 0.08 * bg
    pref_color = _categorical(rng, _COLOR_POP, n)
    pref_feature = np.floor(rng.random(n) * N_FEATURES).astype(np.int64)
    pref_tier = _categorical(rng, np.array([0.35, 0.45, 0.20]), n)
    sensitivity = np.array([1.5, 0.8, 0.3])[pref_tier] * np.exp(0.3 * rng.standard_normal(n))
    activity = np.exp(rng.standard_normal(n))
    return {"taste": taste, "pref_color": pref_color, "pref_feature": pref_feature,
            "pref_tier": pref_tier, "sensitivity": sensitivity, "activity": activity}


def _utility(
    taste_ui: np.ndarray, pref_color: np.ndarray, pref_feature: np.ndarray, pref_tier: np.ndarray,
    sensitivity: np.ndarray, color: np.ndarray, feature: np.ndarray, tier: np.ndarray,
    price_rel: np.ndarray, quality: np.ndarray,
) -> np.ndarray:
    """The latent preference of users for items (all arguments broadcast together)."""
    return (
        W_TASTE * np.log(taste_ui + 0.01)
        + W_COLOR * (color == pref_color)
        + W_FEATURE * (feature == pref_feature % N_FEATURES)
        + W_TIER * (tier == pref_tier)
        - sensitivity * price_rel
        + W_QUALITY * quality
    )


def _world_utility(w: _World, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Utility of user indices `u` for item indices `i` (broadcast)."""
    return _utility(
        w.taste[u, w.cat[i]], w.pref_color[u], w.pref_feature[u], w.pref_tier[u], w.sensitivity[u],
        w.attrs[i, S_COLOR], w.attrs[i, S_FEATURE], w.tier[i], w.price_rel[i], w.quality[i],
    )


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def _cap(s: str) -> str:
    """Upper-case the first character only ('GPS watch' stays 'GPS watch')."""
    return s[:1].upper() + s[1:]


def _title_case(s: str) -> str:
    return " ".join(
        w if (w in _SMALL_WORDS or not w[:1].islower()) else w[0].upper() + w[1:] for w in s.split(" ")
    )


def _table(rows: list[list[str]]) -> np.ndarray:
    """Ragged lists of strings -> (n, width) object array padded with ''."""
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), "", dtype=object)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


def _opt(mask: np.ndarray, text: np.ndarray | str) -> np.ndarray:
    """`text` where `mask`, else '' (object arrays, so `+` concatenates element-wise)."""
    return np.where(mask, text, "").astype(object)


def _item_texts(
    items: dict[str, np.ndarray], lang: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Titles, descriptions, brands, categories, product types and attribute JSON per item.

    Vectorised: per-category lookup tables indexed by the item arrays, joined with
    element-wise `+` on object arrays (no Python loop over items)."""
    en = lang == 0
    cat, a = items["cat"], items["attrs"]
    n = len(cat)
    tloc = items["typ"] - _type_offsets()[cat]
    tu = items["text_u"]
    cats = _CATEGORIES
    q = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731
    tc = _title_case if en else (lambda x: x)
    type_t = _table([[t[lang][0] for t in c.types] for c in cats])
    syn_t = _table([[t[lang][1] for t in c.types] for c in cats])
    brand_t = _table([[str(b[lang]) for b in c.brands] for c in cats])
    feat_t = _table([[f[lang] for f in c.features] for c in cats])
    palette = np.array([p[lang] for p in _PALETTE] + [""], dtype=object)  # -1 -> ''
    use_t = np.array([c.use[lang] for c in cats], dtype=object)
    models = np.array([[x + y for y in _MODEL_B] for x in _MODEL_A], dtype=object)

    tname = type_t[cat, tloc]
    feature = feat_t[cat, a[:, S_FEATURE]]
    brand = brand_t[cat, a[:, S_BRAND]]
    has_color = a[:, S_COLOR] >= 0
    color = palette[a[:, S_COLOR]]
    model = models[items["model"][:, 0], items["model"][:, 1]]

    # Per extra slot j: value, its title form, and flags, as (n,) arrays.
    ex_val, ex_title, ex_pre, ex_spec, ex_json = [], [], [], [], []
    material = np.full(n, "", dtype=object)
    for j in range(MAX_EXTRAS):
        slots = [c.extras[j] if j < len(c.extras) else None for c in cats]
        present = np.array([s is not None for s in slots])[cat]
        vi = np.where(present, a[:, 3 + j], 0)
        val = _table([[v[lang] for v in s.values] if s else [] for s in slots])[cat, vi]
        title = _table([[tc(s.fmt[lang].format(v[lang])) if s.in_title else "" for v in s.values] if s else []
                        for s in slots])[cat, vi]
        is_mat = np.array([bool(s and s.key[0] == "material") for s in slots])[cat] & present
        pre = np.array([bool(s and s.zh_prefix) for s in slots])[cat] & present
        key_shown = np.array([(s.key[0].replace("_", " ") if en else s.key[1]) if s else ""
                              for s in slots], dtype=object)[cat]
        material = np.where(is_mat, val, material)
        ex_val.append(_opt(present, val))
        ex_title.append(_opt(present, title))
        ex_pre.append(pre)
        ex_spec.append(_opt(present & ~is_mat & ~pre, key_shown + (": " if en else "：") + val))
        qkey = np.array([q(s.key[lang]) if s else "" for s in slots], dtype=object)[cat]
        qval = _table([[q(v[lang]) for v in s.values] if s else [] for s in slots])[cat, vi]
        ex_json.append(_opt(present, ", " + qkey + ": " + qval))

    # Titles.
    if en:
        title = brand + " " + model + " " + np.array([tc(x) for x in feat_t.ravel()], dtype=object).reshape(
            feat_t.shape)[cat, a[:, S_FEATURE]] + " " + np.array([tc(x) for x in type_t.ravel()], dtype=object
                                                              ).reshape(type_t.shape)[cat, tloc]
        for part in [*ex_title, _opt(has_color, np.array([_cap(x) for x in palette], dtype=object)[
                a[:, S_COLOR]])]:
            title = title + _opt(part != "", ", " + part)
    else:
        title = brand + " " + model
        for j in range(MAX_EXTRAS):
            title = title + _opt(ex_pre[j] & (ex_title[j] != ""), " " + ex_title[j])
        title = title + " " + feature + " " + tname + _opt(has_color, " " + color)
        for j in range(MAX_EXTRAS):
            title = title + _opt(~ex_pre[j] & (ex_title[j] != ""), " " + ex_title[j])

    # Descriptions: the first sentence plus up to two optional ones.
    surface = np.where(tu[:, 0] < 0.3, syn_t[cat, tloc], tname).astype(object)
    has_mat = material != ""
    specs = np.full(n, "", dtype=object)
    for sp in ex_spec:
        specs = specs + _opt((sp != "") & (specs != ""), "; " if en else "；") + sp
    # One sentence, e.g. "Screen: 14-inch; storage: 512GB SSD."
    specs = np.array([_cap(x) + ("." if en else "。") if x else "" for x in specs], dtype=object)

    if en:
        first = np.array([_cap(x) for x in feat_t.ravel()], dtype=object).reshape(feat_t.shape)[
            cat, a[:, S_FEATURE]] + " " + surface + " by " + brand + _opt(has_mat, ", made of " + material) + "."
        opts = [(has_color, "Available in " + color + "."), (np.ones(n, bool), "Great for " + use_t[cat] + "."),
                (specs != "", specs)]
        sep = " "
    else:
        first = brand + feature + surface + np.where(has_mat, "，采用" + material + "材质。", "。").astype(object)
        opts = [(has_color, "颜色：" + color + "。"), (np.ones(n, bool), "适合" + use_t[cat] + "。"),
                (specs != "", specs)]
        sep = ""
    desc, n_opt = first, np.zeros(n, dtype=np.int64)
    for k, (present, text) in enumerate(opts):
        take = present & (tu[:, k + 1] < 0.55) & (n_opt < 2)
        desc = desc + _opt(take, sep + text)
        n_opt += take

    # Attributes as JSON text (values are json-quoted, so any character is safe).
    keys = ("type", "feature", "color") if en else (_KEYS_ZH["type"], _KEYS_ZH["feature"], _KEYS_ZH["color"])
    qtype = np.array([q(x) for x in type_t.ravel()], dtype=object).reshape(type_t.shape)[cat, tloc]
    qfeat = np.array([q(x) for x in feat_t.ravel()], dtype=object).reshape(feat_t.shape)[cat, a[:, S_FEATURE]]
    qcol = np.array([q(x) for x in palette], dtype=object)[a[:, S_COLOR]]
    js = "{" + q(keys[0]) + ": " + qtype + ", " + q(keys[1]) + ": " + qfeat
    js = js + _opt(has_color, ", " + q(keys[2]) + ": " + qcol)
    for part in ex_json:
        js = js + part
    js = js + "}"
    cat_name = np.array([c.name[lang] for c in cats], dtype=object)[cat]
    return title, desc, brand, cat_name, tname, js


def _typo(text: str, u: np.ndarray, lang: int) -> str:
    """One character swap, drop or duplication inside a word (en) or a CJK run (zh)."""
    chars = list(text)
    if lang == 0:
        pos: list[int] = []
        start = 0
        for w in text.split(" "):
            if len(w) >= 4 and w.isalpha():
                pos.extend(range(start, start + len(w) - 1))
            start += len(w) + 1
    else:
        pos = [k for k in range(len(chars) - 1) if "\u4e00" <= chars[k] <= "\u9fff" and "\u4e00" <= chars[k + 1] <= "\u9fff"]
    if not pos:
        return text
    p = pos[int(u[0] * len(pos))]
    op = int(u[1] * 3)
    if op == 0 and chars[p] != chars[p + 1]:
        chars[p], chars[p + 1] = chars[p + 1], chars[p]
    elif op == 2:
        chars.insert(p, chars[p])
    else:
        del chars[p]
    return "".join(chars)


@dataclass
class _Queries:
    cat: np.ndarray
    typ: np.ndarray
    cons: np.ndarray  # (n_q, N_SLOTS) required value or -1
    text: list[str]
    synonym: np.ndarray
    typo: np.ndarray


def _make_queries(rng: np.random.Generator, cfg: SynthConfig, items: dict[str, np.ndarray]) -> _Queries:
    """Search intents anchored on real items (so every query has exact matches), then text."""
    slot_w = np.array([1.0, 1.0, 0.35] + [0.7] * MAX_EXTRAS)
    keep: dict[tuple[int, ...], int] = {}
    rows: list[tuple[int, int, np.ndarray, np.ndarray]] = []
    for _ in range(50):
        m = max(16, 2 * (cfg.n_queries - len(rows)))
        anchor = _categorical(rng, items["popularity"], m)
        k = _categorical(rng, np.array([0.2, 0.5, 0.3]), m)
        a = items["attrs"][anchor]
        keys = np.where(a >= 0, np.log(rng.random((m, N_SLOTS))) / slot_w, -np.inf)
        order = np.argsort(-keys, axis=1)
        chosen = np.zeros_like(a, dtype=bool)
        np.put_along_axis(chosen, order, np.arange(N_SLOTS)[None, :] < k[:, None], axis=1)
        cons = np.where(chosen & (a >= 0), a, -1)
        text_u = rng.random((m, 8))
        for j in range(m):
            key = (int(items["typ"][anchor[j]]), *map(int, cons[j]))
            if key not in keep and len(rows) < cfg.n_queries:
                keep[key] = len(rows)
                rows.append((int(items["cat"][anchor[j]]), key[0], cons[j], text_u[j]))
        if len(rows) >= cfg.n_queries:
            break
    lang = LANGS.index(cfg.lang)
    t_off = _type_offsets()
    texts, syn, typo = [], [], []
    seen: set[str] = set()
    out_rows = []
    for c_idx, t, cons_j, u in rows:
        c = _CATEGORIES[c_idx]
        names = c.types[t - t_off[c_idx]][lang]
        use_syn = u[0] < cfg.synonym_frac
        tname = names[1 + int(u[1] * (len(names) - 1))] if use_syn else names[0]
        feat = c.features[cons_j[S_FEATURE]][lang] if cons_j[S_FEATURE] >= 0 else None
        color = _PALETTE[cons_j[S_COLOR]][lang] if cons_j[S_COLOR] >= 0 else None
        brand = c.brands[cons_j[S_BRAND]][lang] if cons_j[S_BRAND] >= 0 else None
        extras = [s.fmt[lang].format(s.values[cons_j[3 + j]][lang])
                  for j, s in enumerate(c.extras) if cons_j[3 + j] >= 0]
        color_first = u[2] < 0.5
        if lang == 0:
            toks = ([brand] if brand else []) + ([color] if color and color_first else [])
            toks += ([feat] if feat else []) + [tname] + ([color] if color and not color_first else [])
            text = " ".join(toks + extras).lower()
        else:
            toks = ([brand] if brand else []) + ([color] if color and color_first else [])
            toks += ([feat] if feat else []) + [tname] + ([color] if color and not color_first else [])
            text = ("" if u[3] < 0.5 else " ").join(toks + extras)
        has_typo = bool(u[4] < cfg.typo_frac)
        if has_typo:
            typoed = _typo(text, u[5:7], lang)
            has_typo = typoed != text
            text = typoed
        if text in seen:  # rare surface collision: drop the later intent
            continue
        seen.add(text)
        texts.append(text)
        syn.append(use_syn)
        typo.append(has_typo)
        out_rows.append((c_idx, t, cons_j))
    return _Queries(
        cat=np.array([r[0] for r in out_rows], dtype=np.int64),
        typ=np.array([r[1] for r in out_rows], dtype=np.int64),
        cons=np.array([r[2] for r in out_rows], dtype=np.int64).reshape(-1, N_SLOTS),
        text=texts, synonym=np.array(syn, dtype=bool), typo=np.array(typo, dtype=bool),
    )


def _grade(q: _Queries, w_cat: np.ndarray, w_typ: np.ndarray, w_attrs: np.ndarray,
           qi: np.ndarray, ii: np.ndarray) -> np.ndarray:
    """True relevance 0..3 of items `ii` for queries `qi` (broadcast):
    0 other category, 1 same category other type, 2 same type but a constraint missed, 3 exact."""
    cons = q.cons[qi]
    ok = ((cons == -1) | (cons == w_attrs[ii])).all(axis=-1)
    same_cat = w_cat[ii] == q.cat[qi]
    same_typ = w_typ[ii] == q.typ[qi]
    return np.where(~same_cat, 0, np.where(~same_typ, 1, np.where(ok, 3, 2))).astype(np.int64)


# --------------------------------------------------------------------------------------
# Sessions and events
# --------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class _Listing:
    """Items sorted by type, with cumulative popularity, for per-category/type sampling."""

    order: np.ndarray
    cum: np.ndarray  # cumulative popularity with a leading 0
    t_lo: np.ndarray
    t_hi: np.ndarray
    c_lo: np.ndarray
    c_hi: np.ndarray

    @classmethod
    def build(cls, w: _World) -> _Listing:
        order = np.argsort(w.typ, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(w.popularity[order])])
        n_types = int(_type_offsets()[-1])
        st = w.typ[order]
        t_lo = np.searchsorted(st, np.arange(n_types), side="left")
        t_hi = np.searchsorted(st, np.arange(n_types), side="right")
        off = _type_offsets()
        return cls(order, cum, t_lo, t_hi, t_lo[off[:-1]], t_hi[off[1:] - 1])

    def sample(self, rng_u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Popularity-weighted item per row of `rng_u` within sorted positions [lo, hi)."""
        base, top = self.cum[lo], self.cum[hi]
        pos = np.searchsorted(self.cum, base + rng_u * (top - base), side="right") - 1
        pos = np.clip(pos, lo, np.maximum(hi - 1, lo))
        return self.order[np.minimum(pos, len(self.order) - 1)]


def _session_batch(
    rng: np.random.Generator, b: int, w: _World, q: _Queries, lst: _Listing,
    user_cum: np.ndarray, q_by_cat: tuple[np.ndarray, np.ndarray, np.ndarray], search_frac: float,
) -> dict[str, np.ndarray]:
    """`b` independent sessions: who, when, which channel, what they saw and did."""
    n_cat = w.taste.shape[1]
    user = np.minimum(np.searchsorted(user_cum, rng.random(b) * user_cum[-1], side="right"), len(user_cum) - 1)
    day = np.floor(rng.random(b) * ((w.t_end - w.t_start) // 86400)).astype(np.int64)
    hour = _categorical(rng, _HOUR_W, b)
    t0 = w.t_start + day * 86400 + hour * 3600 + np.floor(rng.random(b) * 3600).astype(np.int64)
    t0 = np.minimum(t0, w.t_end - 3 * 3600)
    channel = _categorical(rng, _CHANNEL_SHARE, b)
    r = rng.random(b)
    cum = np.cumsum(w.taste[user], axis=1)
    cat = np.minimum((cum < r[:, None] * cum[:, -1:]).sum(axis=1), n_cat - 1)
    cat = np.where(channel == EMAIL, np.argmax(w.taste[user], axis=1), cat)  # targeted campaigns
    q_order, q_lo, q_cnt = q_by_cat
    search = (rng.random(b) < search_frac) & (channel != EMAIL) & (q_cnt[cat] > 0)
    q_pick = q_lo[cat] + np.floor(rng.random(b) * np.maximum(q_cnt[cat], 1)).astype(np.int64)
    qi = np.where(search, q_order[np.minimum(q_pick, len(q_order) - 1)], -1) if len(q_order) else np.full(b, -1)
    # Candidate listing: popular items of the category, or of the query's product type.
    k = _CANDIDATES
    ru = rng.random((b, k))
    from_type = search[:, None] & (rng.random((b, k)) < 0.7)
    qt = q.typ[np.maximum(qi, 0)] if len(q.typ) else np.zeros(b, dtype=np.int64)
    lo = np.where(from_type, lst.t_lo[qt][:, None], lst.c_lo[cat][:, None])
    hi = np.where(from_type, lst.t_hi[qt][:, None], lst.c_hi[cat][:, None])
    cand = lst.sample(ru, lo, hi)
    valid = (hi > lo) & (w.created[cand] <= t0[:, None])
    # A listing shows an item once: drop repeated draws (the first occurrence stays).
    by_id = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, by_id, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, by_id, dup_sorted, axis=1)
    valid &= ~dup
    util = _world_utility(w, user[:, None], cand)
    grade = (
        _grade(q, w.cat, w.typ, w.attrs, np.maximum(qi, 0)[:, None], cand) if len(q.typ)
        else np.zeros_like(cand)
    )
    rel = np.where(search[:, None], grade - 1.5, 0.0)
    score = np.where(valid, util + _REL_VIEW * rel + rng.gumbel(size=(b, k)), -np.inf)
    n_view = np.minimum(1 + rng.poisson(2.0, b), _MAX_VIEWS)
    top = np.argsort(-score, axis=1, kind="stable")[:, :_MAX_VIEWS]
    items = np.take_along_axis(cand, top, axis=1)
    seen = np.isfinite(np.take_along_axis(score, top, axis=1)) & (np.arange(_MAX_VIEWS)[None, :] < n_view[:, None])
    z = _B_FUNNEL * (np.take_along_axis(util, top, axis=1) - _U_CENTER + _REL_CLICK * np.take_along_axis(rel, top, axis=1))
    boost = np.where(channel == EMAIL, _EMAIL_BOOST, 0.0)[:, None]
    app = np.where(channel == APP, _APP_BOOST, 0.0)[:, None]
    shape = (b, _MAX_VIEWS)
    click = seen & (rng.random(shape) < _sigmoid(_A_CLICK + z + boost))
    cart = click & (rng.random(shape) < _sigmoid(_A_CART + z))
    buy = cart & (rng.random(shape) < _sigmoid(_A_BUY + z + app))
    t_view = t0[:, None] + np.cumsum(1 + np.floor(rng.exponential(25.0, shape)), axis=1).astype(np.int64)
    t_click = t_view + 1 + np.floor(rng.exponential(4.0, shape)).astype(np.int64)
    t_cart = t_click + 3 + np.floor(rng.exponential(30.0, shape)).astype(np.int64)
    t_buy = t_cart + 5 + np.floor(rng.exponential(90.0, shape)).astype(np.int64)
    return {"user": user, "channel": channel, "query": qi, "items": items,
            "masks": np.stack([seen, click, cart, buy]), "times": np.stack([t_view, t_click, t_cart, t_buy])}


def _simulate(rng: np.random.Generator, cfg: SynthConfig, w: _World, q: _Queries) -> dict[str, np.ndarray]:
    """Organic sessions until the event target is reached, then partner noise and bot clicks."""
    lst = _Listing.build(w)
    user_cum = np.cumsum(w.activity)
    q_order = np.argsort(q.cat, kind="stable")
    q_lo = np.searchsorted(q.cat[q_order], np.arange(len(_CATEGORIES)), side="left")
    q_cnt = np.searchsorted(q.cat[q_order], np.arange(len(_CATEGORIES)), side="right") - q_lo
    ratio = cfg.bot_click_frac / (1.0 - cfg.bot_click_frac)  # bot clicks per organic click
    batches, total = [], 0.0
    est = 4.5  # organic events per session, refined after each batch
    while total < cfg.n_events:
        need = (cfg.n_events - total) / est
        b = int(min(60_000, max(64, 1.15 * need + 32)))
        s = _session_batch(rng, b, w, q, lst, user_cum, (q_order, q_lo, q_cnt), cfg.search_frac)
        ev = s["masks"].sum(axis=(0, 2))
        weight = ev + ratio * s["masks"][1].sum(axis=1)
        s["weight"] = weight
        batches.append(s)
        total += float(weight.sum())
        est = max(0.5, float(weight.mean()))
        if len(batches) > 1000:  # cannot happen with sane settings; avoid looping forever
            break
    sess = {k: np.concatenate([bt[k] for bt in batches]) for k in ("user", "channel", "query", "items", "weight")}
    masks = np.concatenate([bt["masks"] for bt in batches], axis=1)
    times = np.concatenate([bt["times"] for bt in batches], axis=1)
    keep = np.cumsum(sess["weight"]) <= cfg.n_events
    masks, times = masks[:, keep], times[:, keep]
    user, channel, qi, items = sess["user"][keep], sess["channel"][keep], sess["query"][keep], sess["items"][keep]
    # Flatten: one row per (event kind, session, view slot).
    e_kind, s_idx, v_idx = np.nonzero(masks)
    ev_user, ev_item = user[s_idx], items[s_idx, v_idx]
    ev_time = times[e_kind, s_idx, v_idx]
    ev_src, ev_q = channel[s_idx], qi[s_idx]
    noise_kind = np.zeros(len(ev_user), dtype=np.int64)  # 0 clean, 1 item swap, 2 bot
    # Partner feed: a share of rows carries a random (established) item instead.
    old = np.flatnonzero(~w.cold)
    swap = (ev_src == PARTNER) & (rng.random(len(ev_user)) < cfg.partner_noise)
    if len(old):
        repl = old[np.floor(rng.random(len(ev_user)) * len(old)).astype(np.int64)]
        ev_item = np.where(swap, repl, ev_item)
        noise_kind[swap] = 1
    # Bot: pure-noise clicks from random users on random items, after the item exists.
    n_bot = max(0, cfg.n_events - len(ev_user)) if cfg.bot_click_frac > 0 else 0
    b_user = np.floor(rng.random(n_bot) * len(w.activity)).astype(np.int64)
    b_item = np.floor(rng.random(n_bot) * len(w.cat)).astype(np.int64)
    lo = np.maximum(w.t_start, w.created[b_item])
    b_time = lo + np.floor(rng.random(n_bot) * (w.t_end - lo)).astype(np.int64)
    out = {
        "user": np.concatenate([ev_user, b_user]),
        "item": np.concatenate([ev_item, b_item]),
        "event": np.concatenate([e_kind, np.full(n_bot, 1)]),
        "time": np.concatenate([ev_time, b_time]),
        "source": np.concatenate([ev_src, np.full(n_bot, BOT)]),
        "query": np.concatenate([ev_q, np.full(n_bot, -1)]),
        "noise": np.concatenate([noise_kind, np.full(n_bot, 2)]),
    }
    order = np.lexsort((np.arange(len(out["time"])), out["time"]))  # by time, then generation
    return {k: v[order] for k, v in out.items()}


# --------------------------------------------------------------------------------------
# Judgments
# --------------------------------------------------------------------------------------


def _judgments(rng: np.random.Generator, cfg: SynthConfig, w: _World, q: _Queries) -> dict[str, np.ndarray]:
    """~20-40 candidates per query at several relevance levels, graded by labelers; the last
    labeler is careless and corrupts a large share of their grades."""
    n_items = len(w.cat)
    by_cat = [np.flatnonzero(w.cat == c) for c in range(len(_CATEGORIES))]
    attrs_by_cat = [w.attrs[p] for p in by_cat]
    share = {3: 0.35, 2: 0.3, 1: 0.2}  # the rest (~15%) are grade 0: other categories
    qs, its = [], []
    for j in range(len(q.text)):
        n_c = int(rng.integers(cfg.judged_min, cfg.judged_max + 1))
        c = int(q.cat[j])
        pool, cons = by_cat[c], q.cons[j]
        ok = ((cons == -1) | (attrs_by_cat[c] == cons)).all(axis=1)
        g = np.where(w.typ[pool] != q.typ[j], 1, np.where(ok, 3, 2))
        picked = []
        for lvl in (3, 2, 1):
            cand = pool[g == lvl]
            m = min(len(cand), int(round(share[lvl] * n_c)))
            if m:
                picked.append(rng.choice(cand, size=m, replace=False))
        chosen = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        rest = n_c - len(chosen)
        if rest > 0:  # fill with random items of other categories (grade 0)
            r = rng.integers(0, n_items, size=4 * rest + 16)
            r = pd.unique(r[w.cat[r] != c])[:rest]
            chosen = np.concatenate([chosen, r])
        qs.append(np.full(len(chosen), j))
        its.append(chosen)
    qi = np.concatenate(qs) if qs else np.zeros(0, dtype=np.int64)
    ii = np.concatenate(its) if its else np.zeros(0, dtype=np.int64)
    true = _grade(q, w.cat, w.typ, w.attrs, qi, ii)
    n_lab = cfg.n_labelers
    lab = np.floor(rng.random(len(qi)) * n_lab).astype(np.int64)
    second = rng.random(len(qi)) < cfg.second_judgment_frac
    lab2 = (lab + 1 + np.floor(rng.random(len(qi)) * (n_lab - 1)).astype(np.int64)) % n_lab
    qi = np.concatenate([qi, qi[second]])
    ii = np.concatenate([ii, ii[second]])
    true = np.concatenate([true, true[second]])
    lab = np.concatenate([lab, lab2[second]])
    order = np.lexsort((lab, ii, qi))
    qi, ii, true, lab = qi[order], ii[order], true[order], lab[order]
    n = len(qi)
    careless = lab == n_lab - 1
    u, v, s = rng.random(n), rng.random(n), rng.random(n)
    # Careless: flip (3 - g) or a random other grade. Accurate: rare off-by-one slips.
    other = (true + 1 + np.floor(v * 3).astype(np.int64)) % 4
    bad = np.where(s < 0.5, 3 - true, other)
    step = np.where(v < 0.5, -1, 1)
    slip = true + step
    slip = np.where((slip < 0) | (slip > 3), true - step, slip)
    grade = np.where(careless & (u < cfg.careless_rate), bad,
                     np.where(~careless & (u < cfg.slip_rate), slip, true))
    t = w.t_start + np.floor(rng.random(n) * (w.t_end - w.t_start)).astype(np.int64)
    cost = np.where(careless, _LABELER_COST[1], _LABELER_COST[0])
    return {"query": qi, "item": ii, "true": true, "grade": grade, "labeler": lab, "time": t, "cost": cost}


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _ts(sec: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(sec, dtype=np.int64), unit="s", utc=True)).astype(
        "datetime64[ns, UTC]"
    )


def _labeler_names(n: int) -> list[str]:
    return [f"rater_{chr(ord('a') + k)}" if k < 26 else f"rater_{k}" for k in range(n)]


class _Stages:
    """Optional progress bar over the synthesis stages."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="synth", unit="stage")

    def __call__(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _rngs(seed: int) -> Iterator[np.random.Generator]:
    """Independent streams per stage (items, users, queries, sessions, judgments), so e.g.
    changing n_users leaves the catalog unchanged."""
    for ss in np.random.SeedSequence(seed).spawn(5):
        yield np.random.default_rng(ss)


def synthesize(cfg: SynthConfig, *, progress: bool = False) -> tuple[Dataset, dict[str, pd.DataFrame]]:
    """Build the shop: a validated Dataset plus ground-truth tables.

    Truth tables: user_tastes (user_id + one weight column per category), user_truth,
    item_truth, interaction_noise, judgment_truth, queries, sources, labelers.
    """
    cfg.checked()
    stages = _Stages(progress, 6)
    r_items, r_users, r_queries, r_sessions, r_judg = _rngs(cfg.seed)
    lang = LANGS.index(cfg.lang)
    ts = pd.Timestamp(cfg.start)
    t_start = int((ts.tz_localize("UTC") if ts.tzinfo is None else ts).timestamp())
    t_end = t_start + cfg.days * 86400

    it = _make_items(r_items, cfg, t_start, t_end)
    us = _make_users(r_users, cfg)
    w = _World(
        lang=lang, t_start=t_start, t_end=t_end, cat=it["cat"], typ=it["typ"], attrs=it["attrs"],
        tier=it["tier"], price_rel=it["price_rel"], price=it["price"], quality=it["quality"],
        popularity=it["popularity"], created=it["created"], cold=it["cold"], **us,
    )
    item_ids = np.array([f"i{k:06d}" for k in range(cfg.n_items)], dtype=object)
    user_ids = np.array([f"u{k:06d}" for k in range(cfg.n_users)], dtype=object)
    titles, descs, brands, cat_names, type_names, attrs_json = _item_texts(it, lang)
    items = pd.DataFrame({
        Col.ITEM_ID: item_ids, Col.TITLE: titles, Col.DESCRIPTION: descs, Col.BRAND: brands,
        Col.CATEGORY: cat_names, Col.PRICE: it["price"], Col.CREATED_AT: _ts(it["created"]),
        Col.ATTRIBUTES: attrs_json,
    })
    stages("catalog")

    q = _make_queries(r_queries, cfg, it)
    stages("queries")

    ev = _simulate(r_sessions, cfg, w, q)
    q_text = np.array([*q.text, None], dtype=object)
    src_names = np.array(SOURCES, dtype=object)
    cost = np.array([_COST[s] for s in SOURCES])
    inter = pd.DataFrame({
        Col.USER_ID: user_ids[ev["user"]], Col.ITEM_ID: item_ids[ev["item"]],
        Col.EVENT: np.array(EVENTS, dtype=object)[ev["event"]], Col.LABEL: np.nan,
        Col.TIMESTAMP: _ts(ev["time"]), Col.SOURCE: src_names[ev["source"]],
        Col.QUERY: q_text[ev["query"]], Col.COST: cost[ev["source"]],
    })
    stages("events")

    jd = _judgments(r_judg, cfg, w, q)
    labs = np.array(_labeler_names(cfg.n_labelers), dtype=object)
    judg = pd.DataFrame({
        Col.QUERY: np.array(q.text, dtype=object)[jd["query"]] if len(q.text) else np.array([], dtype=object),
        Col.ITEM_ID: item_ids[jd["item"]], Col.GRADE: jd["grade"].astype(np.float64),
        Col.LABELER: labs[jd["labeler"]], Col.TIMESTAMP: _ts(jd["time"]), Col.COST: jd["cost"],
    })
    stages("judgments")

    meta = {
        "provenance": PROVENANCE, "synth": asdict(cfg), "lang": cfg.lang,
        "currency": "CNY" if cfg.lang == "zh" else "USD",
    }
    ds = Dataset.from_frames(cfg.dataset_name, items, inter, judg, meta=meta)
    stages("validate")

    truth = _truth_tables(cfg, w, q, ev, jd, item_ids, user_ids, cat_names, type_names)
    stages("truth")
    stages.close()
    return ds, truth


def _truth_tables(
    cfg: SynthConfig, w: _World, q: _Queries, ev: dict[str, np.ndarray], jd: dict[str, np.ndarray],
    item_ids: np.ndarray, user_ids: np.ndarray, cat_names: np.ndarray, type_names: np.ndarray,
) -> dict[str, pd.DataFrame]:
    lang = w.lang
    cats = [c.name[lang] for c in _CATEGORIES]
    tastes = pd.DataFrame(w.taste, columns=cats)
    tastes.insert(0, Col.USER_ID, user_ids)
    users = pd.DataFrame({
        Col.USER_ID: user_ids, "top_category": np.array(cats, dtype=object)[np.argmax(w.taste, axis=1)],
        "pref_color": np.array([p[lang] for p in _PALETTE], dtype=object)[w.pref_color],
        "pref_color_idx": w.pref_color, "pref_feature_idx": w.pref_feature, "pref_tier": w.pref_tier,
        "price_sensitivity": w.sensitivity, "activity": w.activity,
    })
    items = pd.DataFrame({
        Col.ITEM_ID: item_ids, Col.CATEGORY: cat_names,
        "product_type": type_names, "quality": w.quality,
        "popularity": w.popularity, "is_cold_start": w.cold, "price_rel": w.price_rel,
        "brand_tier": w.tier, "color_idx": w.attrs[:, S_COLOR], "feature_idx": w.attrs[:, S_FEATURE],
    })
    src = np.array(SOURCES, dtype=object)
    noise = pd.DataFrame({
        "row": np.arange(len(ev["time"]), dtype=np.int64), "is_noise": ev["noise"] > 0,
        Col.SOURCE: src[ev["source"]],
        "noise_kind": np.array(["", "item_swap", "bot"], dtype=object)[ev["noise"]],
    })
    noise["noise_kind"] = noise["noise_kind"].replace("", None)
    labs = _labeler_names(cfg.n_labelers)
    careless = jd["labeler"] == cfg.n_labelers - 1
    judg = pd.DataFrame({
        "row": np.arange(len(jd["query"]), dtype=np.int64), "true_grade": jd["true"].astype(np.int64),
        "is_corrupted": jd["grade"] != jd["true"], Col.LABELER: np.array(labs, dtype=object)[jd["labeler"]],
        "careless": careless,
    })
    t_off = _type_offsets()
    queries = pd.DataFrame({
        Col.QUERY: np.array(q.text, dtype=object), Col.CATEGORY: np.array(cats, dtype=object)[q.cat]
        if len(q.cat) else np.array([], dtype=object),
        "product_type": [
            _CATEGORIES[c].types[t - t_off[c]][lang][0] for c, t in zip(q.cat, q.typ, strict=True)
        ],
        "n_constraints": (q.cons >= 0).sum(axis=1), "uses_synonym": q.synonym, "has_typo": q.typo,
    })
    noise_cfg = {"web": 0.0, "app": 0.0, "email": 0.0, "partner_feed": cfg.partner_noise, "bot": 1.0}
    n_rec = np.bincount(ev["source"], minlength=len(SOURCES))
    n_noise = np.bincount(ev["source"], weights=(ev["noise"] > 0).astype(float), minlength=len(SOURCES))
    sources = pd.DataFrame({
        Col.SOURCE: list(SOURCES), "cost_per_record": [_COST[s] for s in SOURCES],
        "noise_rate": [noise_cfg[s] for s in SOURCES], "n_records": n_rec,
        "observed_noise_rate": np.divide(n_noise, n_rec, out=np.zeros(len(SOURCES)), where=n_rec > 0),
    })
    lab_n = np.bincount(jd["labeler"], minlength=cfg.n_labelers)
    lab_bad = np.bincount(jd["labeler"], weights=(jd["grade"] != jd["true"]).astype(float),
                          minlength=cfg.n_labelers)
    labelers = pd.DataFrame({
        Col.LABELER: labs, "careless": np.arange(cfg.n_labelers) == cfg.n_labelers - 1,
        "error_rate": [cfg.slip_rate] * (cfg.n_labelers - 1) + [cfg.careless_rate],
        "cost_per_judgment": [_LABELER_COST[0]] * (cfg.n_labelers - 1) + [_LABELER_COST[1]],
        "n_judgments": lab_n,
        "observed_error_rate": np.divide(lab_bad, lab_n, out=np.zeros(cfg.n_labelers), where=lab_n > 0),
    })
    return {
        "user_tastes": tastes, "user_truth": users, "item_truth": items, "interaction_noise": noise,
        "judgment_truth": judg, "queries": queries, "sources": sources, "labelers": labelers,
    }


def true_utility(truth: dict[str, pd.DataFrame], user_ids: Any, item_ids: Any) -> np.ndarray:
    """Latent preference matrix (len(user_ids), len(item_ids)) from the truth tables: the
    ideal recommender ranks each user's items by it."""
    ut = truth["user_truth"].set_index(Col.USER_ID)
    tastes = truth["user_tastes"].set_index(Col.USER_ID)
    itt = truth["item_truth"].set_index(Col.ITEM_ID)
    u = ut.loc[np.asarray(user_ids, dtype=object)]
    i = itt.loc[np.asarray(item_ids, dtype=object)]
    cat_idx = pd.Index(tastes.columns).get_indexer(pd.Index(i[Col.CATEGORY].astype(str)))
    taste = tastes.loc[u.index].to_numpy()[:, cat_idx]
    col = lambda s: s.to_numpy()[:, None]  # noqa: E731
    row = lambda s: s.to_numpy()[None, :]  # noqa: E731
    return _utility(
        taste, col(u["pref_color_idx"]), col(u["pref_feature_idx"]), col(u["pref_tier"]),
        col(u["price_sensitivity"]), row(i["color_idx"]), row(i["feature_idx"]), row(i["brand_tier"]),
        row(i["price_rel"]), row(i["quality"]),
    )


def save_synth(cfg: SynthConfig, out_dir: Path | str, *, progress: bool = False) -> Dataset:
    """Write the dataset folder plus ground truth as Parquet under `out_dir/truth/`."""
    out = Path(out_dir)
    ds, truth = synthesize(cfg, progress=progress)
    ds.save(out)
    tdir = out / TRUTH_DIR
    tdir.mkdir(parents=True, exist_ok=True)
    for name, df in truth.items():
        df.to_parquet(tdir / f"{name}.parquet", index=False)
    return ds


def load_truth(dataset_dir: Path | str) -> dict[str, pd.DataFrame]:
    """Ground-truth tables written by `save_synth` (empty dict when there are none)."""
    tdir = Path(dataset_dir) / TRUTH_DIR
    if not tdir.is_dir():
        return {}
    return {p.stem: pd.read_parquet(p) for p in sorted(tdir.glob("*.parquet"))}


__all__ = ["PROVENANCE", "SOURCES", "SynthConfig", "load_truth", "save_synth", "synthesize", "true_utility"]
