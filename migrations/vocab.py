"""The hotel app's vocabulary, frozen as the migrations need it.

These lists are copies on purpose: a revision must keep doing what it did
when it was written, whatever the live code says later.  ``utils.models``
declares the same values for the ORM; a test checks they agree.

Sources (the minibar application, ``models/_models.py`` and its
``update_ml_enums*.py`` scripts): the PostgreSQL enum types it creates, in
the order PostgreSQL holds their labels.
"""
from __future__ import annotations

# ml_metrics.metric_type in the app: enum ml_metric_type.
APP_METRIC_TYPES = (
    "stok_seviye", "tuketim_miktar", "dolum_sure", "stok_bitis_tahmini", "zimmet_kullanim", "zimmet_fire",
    "doluluk_oran", "bosta_tuketim", "talep_yanit_sure", "talep_yogunluk", "qr_okutma_siklik",
    "qr_okutma_performans",
)
# ml_alerts.alert_type: enum ml_alert_type.  ``zimmet_kullanim_dusuk`` is in the
# database type but not in the app's ORM, which fails to read a row holding it.
APP_ALERT_TYPES = (
    "stok_anomali", "tuketim_anomali", "dolum_gecikme", "stok_bitis_uyari", "zimmet_fire_yuksek",
    "zimmet_kullanim_dusuk", "bosta_tuketim_var", "doluda_tuketim_yok", "talep_yanitlanmadi",
    "talep_yogunluk_yuksek", "qr_kullanim_dusuk",
)
UNREADABLE_ALERT_TYPES = ("zimmet_kullanim_dusuk",)
# ml_alerts.severity: enum ml_alert_severity, lowest first (the app orders by it).
APP_SEVERITIES = ("dusuk", "orta", "yuksek", "kritik")
SEVERITY_FROM_ENGLISH = {"low": "dusuk", "medium": "orta", "high": "yuksek", "critical": "kritik"}

# The alert type this service writes for a metric type (never an unreadable one).
# Anything else gets the app's own "closest type" for alerts that fit none:
# it raises its system-level alerts as ``stok_anomali``.
ALERT_TYPE_FOR_METRIC = {
    "stok_seviye": "stok_anomali",
    "tuketim_miktar": "tuketim_anomali",
    "dolum_sure": "dolum_gecikme",
    "stok_bitis_tahmini": "stok_bitis_uyari",
    "zimmet_fire": "zimmet_fire_yuksek",
    "zimmet_kullanim": "zimmet_fire_yuksek",  # the app's own choice once it dropped zimmet_kullanim_dusuk
    "bosta_tuketim": "bosta_tuketim_var",
    "talep_yanit_sure": "talep_yanitlanmadi",
    "talep_yogunluk": "talep_yogunluk_yuksek",
    "qr_okutma_siklik": "qr_kullanim_dusuk",
    "qr_okutma_performans": "qr_kullanim_dusuk",
    # types the app's collectors write although its enum refuses them
    "tuketim_oran": "tuketim_anomali",
    "minibar_tuketim": "tuketim_anomali",
}
DEFAULT_ALERT_TYPE = "stok_anomali"

# The metric type an app-written alert is about (to fill ml_alerts.metric_type).
METRIC_FOR_ALERT_TYPE = {
    "stok_anomali": "stok_seviye",
    "tuketim_anomali": "tuketim_miktar",
    "dolum_gecikme": "dolum_sure",
    "stok_bitis_uyari": "stok_bitis_tahmini",
    "zimmet_fire_yuksek": "zimmet_fire",
    "zimmet_kullanim_dusuk": "zimmet_kullanim",
    "bosta_tuketim_var": "bosta_tuketim",
    "doluda_tuketim_yok": "doluluk_oran",
    "talep_yanitlanmadi": "talep_yanit_sure",
    "talep_yogunluk_yuksek": "talep_yogunluk",
    "qr_kullanim_dusuk": "qr_okutma_siklik",
}

# Figures this service writes into ml_metrics for itself (not observations):
# removed when the adoption is undone, because the app's ORM cannot read them.
OWN_FIGURE_TYPES = ("model_load_time",)


def _case(column: str, mapping: dict[str, str], default: str) -> str:
    whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in mapping.items())
    return f"CASE {column} {whens} ELSE {default} END"


def metric_for_alert_sql(alert_type_column: str) -> str:
    """SQL expression: the metric type for an alert type column (any dialect)."""
    return _case(alert_type_column, METRIC_FOR_ALERT_TYPE, alert_type_column)


def alert_type_for_metric_sql(metric_type_column: str) -> str:
    """SQL expression: the app's alert type for a metric type column (any dialect)."""
    return _case(metric_type_column, ALERT_TYPE_FOR_METRIC, f"'{DEFAULT_ALERT_TYPE}'")


def severity_from_english_sql(column: str) -> str:
    """SQL expression: an English severity (as earlier releases wrote it) in the app's words."""
    return _case(column, SEVERITY_FROM_ENGLISH, "'orta'")


def severity_to_english_sql(column: str) -> str:
    return _case(column, {v: k for k, v in SEVERITY_FROM_ENGLISH.items()}, "'medium'")
