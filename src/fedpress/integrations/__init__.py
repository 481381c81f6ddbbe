"""Bridges to FL frameworks, imported on demand (each needs its optional extra).

* :mod:`fedpress.integrations.flower` — Flower 1.42 client mod and strategy wrapper
  (``pip install 'fedpress[flower]'``).
"""
