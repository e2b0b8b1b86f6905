"""Draft a YAML source mapping from a sample of raw logs (`simpersona mapping draft`).

``draft_mapping(inputs, config)`` reads the first ``config.rows`` rows with the pipeline's own readers
(CSV plain or gzip, with or without a header; Parquet; JSON lines), profiles every column and proposes:

* the layout: format, CSV delimiter, whether the first line is a header (column names are invented
  for a header-less file);
* which column feeds each canonical field, by name first (``seller_id`` -> merchant_id, ``user_id`` ->
  buyer_id, ...), then by content for what the names do not tell (the time column by what parses, the
  event column by its few distinct values, the buyer by how often consecutive rows repeat it, the
  product by the most distinct values, the category by fewer; the session when no column names a
  user or the user column is mostly empty or ``NA``);
* how to read the timestamps, checked with the same parser ``prepare`` uses (``iso``, a strptime
  pattern, ``unix_s``, ``unix_ms``, ``unix_us``, ``unix_ns``; day resolution for date-only values such as ``MMDD`` or ``M-D``),
  with a zone hint from the hour of least activity and a valid range when a few rows lie on stray
  days far from the rest;
* every distinct event code with its count, mapped where the name is obvious (view/pv/click ->
  product_view, cart -> add_to_cart, buy/order -> purchase, fav -> favorite, ..., plural and past
  forms too) and left as a commented TODO otherwise (numeric codes always).

The result is YAML text with comments (hand formatted). What the sample cannot tell (the meaning of
numeric codes, a year the dates do not carry) is left empty with a TODO comment, so that the mapping
fails to load with a message naming the key until the user fills it in.

One module per step: ``sample`` (layout and rows), ``column_profile`` (what each column looks like),
``timestamps``, ``column_roles``, ``event_codes``, ``yaml_text``, and ``draft``, which runs them in
that order. Import from the package: this is its public surface.
"""

from learners.data.mapping_draft.draft import Draft, DraftConfig, draft_mapping
from learners.data.mapping_draft.event_codes import event_word
from learners.data.mapping_draft.sample import sniff_csv
from learners.data.mapping_draft.timestamps import stray_range

__all__ = ["Draft", "DraftConfig", "draft_mapping", "event_word", "sniff_csv", "stray_range"]
