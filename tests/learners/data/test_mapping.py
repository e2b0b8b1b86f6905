"""The YAML source mapping: the shipped examples load, and every invalid mapping fails fast and clearly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from learners.data.mapping import load_mapping, mapping_from_dict
from learners.data.schema import EVENT_MEANINGS, EVENT_TYPES, event_vocabulary_lines

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"

VALID = {
    "name": "shop",
    "format": "csv",
    "csv": {"delimiter": ",", "header": True},
    "fields": {"merchant_id": "seller", "buyer_id": "user", "ts": "when"},
    "timestamp": {"format": "%m%d", "year": 2014, "resolution": "day"},
    "event_type": {"column": "action", "map": {"0": "product_view", "2": "purchase"}},
}


def with_changes(**changes: object) -> dict:
    values = yaml.safe_load(yaml.safe_dump(VALID))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = values
        for key in parents:
            target = target[key]
        if value is None:
            target.pop(leaf)
        else:
            target[leaf] = value
    return values


@pytest.mark.parametrize("name", ["tmall-ijcai15", "tmall-brand", "rees46", "taobao"])
def test_shipped_mappings_load(name):
    mapping = load_mapping(EXAMPLES / f"{name}.yaml")
    assert mapping.name == name
    assert set(mapping.event_type.map.values()) <= set(EVENT_TYPES)
    assert {"merchant_id", "buyer_id", "ts"} <= set(mapping.fields)


def test_valid_mapping_fields():
    mapping = mapping_from_dict(VALID, "m.yaml")
    assert mapping.fields["merchant_id"].column == "seller"
    assert mapping.day_resolution
    assert mapping.columns_used() == ["seller", "user", "when", "action"]


def test_constant_and_integer_codes_become_text():
    mapping = mapping_from_dict(
        with_changes(fields__merchant_id={"constant": 7}, event_type__map={0: "product_view"})
    )
    assert mapping.fields["merchant_id"].constant == "7"
    assert mapping.event_type.map == {"0": "product_view"}


def test_dropped_codes_become_text_without_repeats():
    mapping = mapping_from_dict(with_changes(event_type__drop=[6, "click", "6"]))
    assert mapping.event_type.drop == ("6", "click")
    assert mapping_from_dict(VALID).event_type.drop == ()


def test_shipped_mappings_list_the_canonical_vocabulary():
    block = "\n".join(event_vocabulary_lines("#   "))
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert block in path.read_text(encoding="utf-8"), path


def test_readme_lists_the_canonical_vocabulary_and_the_row_accounting():
    readme = (EXAMPLES.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Bring your own logs") :]
    section = section[: section.index("\n## ", 1)]
    for name, meaning in EVENT_MEANINGS.items():
        assert f"| `{name}` | {meaning} |" in section, name
    assert "rows_read = rows_kept + rows_quarantined + rows_dropped" in section


def test_date_only_max_is_inclusive_end_of_day():
    mapping = mapping_from_dict(
        with_changes(timestamp__min="2017-11-25", timestamp__max=dt.date(2017, 12, 3))
    )
    assert mapping.timestamp.min == dt.datetime(2017, 11, 25)
    assert mapping.timestamp.max == dt.datetime(2017, 12, 3, 23, 59, 59, 999000)


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"fields__shop": "x"}, "fields.shop", "unknown key"),
        ({"fields__buyer_id": None}, "fields.buyer_id", "missing"),
        ({"fields__ts": {"constant": "2014"}}, "fields.ts", "constant is not allowed"),
        ({"fields__merchant_id": {"value": 1}}, "fields.merchant_id", "constant"),
        ({"format": "xlsx"}, "format", "expected one of"),
        ({"csv__delimiter": ";;"}, "csv.delimiter", "one character"),
        ({"csv__header": False}, "csv.columns", "missing while csv.header is false"),
        ({"csv__header": "yes please"}, "csv.header", "true or false"),
        ({"timestamp__year": None}, "timestamp.year", "has no year"),
        ({"timestamp__format": "dd/mm"}, "timestamp.format", "neither a strptime pattern"),
        ({"timestamp__timezone": "Mars/Olympus"}, "timestamp.timezone", "unknown time zone"),
        ({"timestamp__resolution": "hour"}, "timestamp.resolution", "expected one of"),
        ({"timestamp__min": "2017-12-04", "timestamp__max": "2017-12-03"}, "timestamp.min", "after max"),
        ({"timestamp__min": "yesterday"}, "timestamp.min", "ISO"),
        ({"event_type__map": {"0": "click"}}, "event_type.map.0", "not a canonical event type"),
        ({"event_type__map": {}}, "event_type.map", "non-empty"),
        ({"event_type": None}, "event_type", "missing"),
        ({"event_type": {"constant": "click"}}, "event_type.constant", "not a canonical event type"),
        (
            {"event_type": {"constant": "product_view", "column": "action"}},
            "event_type.column",
            "given with event_type.constant",
        ),
        ({"fields__buyer_id": ""}, "fields.buyer_id", "no value given"),  # a drafted mapping's TODO
        ({"event_type__column": None}, "event_type.column", "no value given"),
        ({"event_type__drop": ["2"]}, "event_type.drop.2", "both mapped (to purchase) and dropped"),
        ({"event_type__drop": [2]}, "event_type.drop.2", "both mapped (to purchase) and dropped"),
        ({"event_type__drop": "6"}, "event_type.drop", "expected a list of codes"),
        ({"event_type__drop": [["6"]]}, "event_type.drop", "not text or an integer"),
    ],
)
def test_invalid_mapping_fails_fast_naming_key_and_fix(changes, key, words):
    with pytest.raises(ValueError) as err:
        mapping_from_dict(with_changes(**changes), "bad.yaml")
    message = str(err.value)
    assert message.startswith("mapping bad.yaml: key '" + key + "'")
    assert words in message
    assert "fix:" in message


def test_a_log_of_one_event_type_names_it_instead_of_a_column():
    mapping = mapping_from_dict(with_changes(event_type={"constant": "product_view"}), "views.yaml")
    assert mapping.event_type.constant == "product_view" and mapping.event_type.column is None
    assert sorted(mapping.columns_used()) == ["seller", "user", "when"]


def test_headerless_columns_must_cover_mapped_columns():
    values = with_changes(csv__header=False, csv__columns=["seller", "user", "when"])
    with pytest.raises(ValueError, match="lacks column 'action'"):
        mapping_from_dict(values, "bad.yaml")


def test_load_mapping_reports_yaml_and_file_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken.yaml: not valid YAML"):
        load_mapping(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"list.yaml: key '': expected a mapping"):
        load_mapping(listing)
    with pytest.raises(ValueError, match=r"missing.yaml: cannot read the file"):
        load_mapping(tmp_path / "missing.yaml")


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "myshop.yaml"
    values = with_changes(name=None)
    path.write_text(yaml.safe_dump(values))
    assert load_mapping(path).name == "myshop"
