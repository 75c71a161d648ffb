"""Where a split's rows come from: local files, a ``datasets.Dataset``, a list of dicts, or the hub.

:func:`resolve_source` classifies a split's argument without reading anything (bad paths and names fail at
construction); :func:`read_examples` reads it into ``{"id", "question", "solution"}`` dicts, the ids being
the rows' positions in their source or the values of an ``id`` column.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from datasets import Dataset  # type: ignore[import-untyped, unused-ignore]

__all__ = ["FILE_TYPES", "Source", "load_hub", "read_examples", "resolve_source"]

#: The local file types a split can be read from, by suffix.
FILE_TYPES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SPLIT_NAME_RE = re.compile(r"^[\w.\-\[\]:%+]+$")  # "test", "train[:100]", "train[90%:]"
_FIRST_IDS = 5  # ids listed in error messages


@dataclass(frozen=True)
class Source:
    """Where a split's rows come from (resolved at construction; nothing is read yet)."""

    kind: Literal["file", "hub", "dataset", "records"]
    label: str
    path: Path | None = None
    hub_name: str | None = None
    hub_split: str | None = None
    data: Any = None


def resolve_source(value: Any, split: str, train_hub: str | None) -> Source | None:
    """Classify a split's source without reading it."""
    if value is None:
        if split == "train":
            raise ValueError("`train` is required: a file path, a hub name, a datasets.Dataset or a list of dicts.")
        return None
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if path.is_file():
            if path.suffix.lower() not in FILE_TYPES:
                raise ValueError(
                    f"`{split}`: cannot read {str(value)!r}: supported file types are {sorted(FILE_TYPES)} "
                    "(or load it into a datasets.Dataset and pass that)."
                )
            return Source("file", f"{split} file {str(value)!r}", path=path)
        if path.is_dir():
            raise ValueError(f"`{split}`={str(value)!r} is a folder; pass a data file ({sorted(FILE_TYPES)}).")
        if isinstance(value, str):
            if split != "train" and train_hub is not None and "/" not in value and _SPLIT_NAME_RE.match(value):
                return Source(
                    "hub", f"{split} split {value!r} of hub dataset {train_hub!r}", hub_name=train_hub, hub_split=value
                )
            if _HUB_NAME_RE.match(value) and path.suffix.lower() not in FILE_TYPES:
                return Source("hub", f"{split} split of hub dataset {value!r}", hub_name=value, hub_split=split)
        raise ValueError(
            f"`{split}`={str(value)!r}: no such file, and not a hub dataset name ('owner/name')"
            + (" or a split name of the training hub dataset" if split != "train" and train_hub else "")
            + "."
        )
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        bad = [i for i, row in enumerate(value) if not isinstance(row, Mapping)]
        if bad:
            raise TypeError(
                f"`{split}` as a list must hold dicts (one per row); position {bad[0]} holds "
                f"{type(value[bad[0]]).__name__}."
            )
        return Source("records", f"the {split} list", data=value)
    import datasets

    if isinstance(value, datasets.Dataset):
        return Source("dataset", f"the {split} Dataset", data=value)
    if isinstance(value, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TypeError(
            f"`{split}` is a {type(value).__name__}; pass one of its splits (e.g. dataset[{split!r}]), "
            "or its hub name with split names."
        )
    raise TypeError(
        f"`{split}` must be a file path, a hub name, a datasets.Dataset or a list of dicts, got {type(value).__name__}."
    )


def read_examples(source: Source, fields: Mapping[str, str], hub_config: str | None) -> list[dict[str, Any]]:
    """Read a source into ``{"id", "question", "solution"}`` dicts (values not checked yet)."""
    if source.kind == "hub":
        records, columns = _dataset_records(load_hub(source, hub_config), fields)
    elif source.kind == "dataset":
        records, columns = _dataset_records(source.data, fields)
    elif source.kind == "records":
        records = [dict(row) for row in source.data]
        columns = list(dict.fromkeys(key for row in records for key in row))
    else:
        if source.path is None:
            raise RuntimeError("a file source without a path")
        records = _read_file(source.path, source.label)
        columns = list(dict.fromkeys(key for row in records for key in row))
    if not records:
        raise ValueError(f"{source.label} has no rows.")
    missing = [(key, column) for key, column in fields.items() if column not in columns]
    if missing:
        key, column = missing[0]
        raise ValueError(
            f"{source.label} has no column {column!r} (the {key!r} field); its columns are {columns}. Pass "
            "fields='gsm8k' (question, answer), fields='math' (problem, solution) or "
            "fields={'question': ..., 'solution': ...} naming its columns."
        )
    ids = _example_ids(records, fields.get("id"), source.label)
    return [
        {"id": example_id, "question": row.get(fields["question"]), "solution": row.get(fields["solution"])}
        for example_id, row in zip(ids, records, strict=True)
    ]


def _example_ids(records: Sequence[Mapping[str, Any]], column: str | None, label: str) -> list[int]:
    if column is None:
        return list(range(len(records)))
    ids: list[int] = []
    bad: list[int] = []
    for position, row in enumerate(records):
        value = row.get(column)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            bad.append(position)
            continue
        ids.append(int(value))
    if bad:
        raise ValueError(
            f"{label}: the id column {column!r} must hold ints >= 0; {len(bad)} rows do not "
            f"(first at positions {bad[:_FIRST_IDS]}). Drop 'id' from `fields` to number the rows 0, 1, 2, ..."
        )
    seen: set[int] = set()
    repeated: set[int] = set()
    for example_id in ids:
        (repeated if example_id in seen else seen).add(example_id)
    if repeated:
        raise ValueError(
            f"{label}: the id column {column!r} must hold unique values; repeated: {sorted(repeated)[:_FIRST_IDS]}."
        )
    return ids


def _dataset_records(dataset: Any, fields: Mapping[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    columns = list(dataset.column_names)
    wanted = [column for column in dict.fromkeys(fields.values()) if column in columns]
    records: list[dict[str, Any]] = dataset.select_columns(wanted).to_list() if len(dataset) else []
    return records, columns


def _read_file(path: Path, label: str) -> list[dict[str, Any]]:
    kind = FILE_TYPES[path.suffix.lower()]
    if kind == "parquet":
        import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    if kind == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    text = path.read_text(encoding="utf-8")
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if "Extra data" not in err.msg:  # not JSON Lines in a .json file either
                raise ValueError(f"{label} is not valid JSON: {err}.") from None
        else:
            return _json_records(data, label)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{label}, line {number}: not valid JSON ({err}).") from None
        if not isinstance(row, dict):
            raise ValueError(f"{label}, line {number}: each line must be a JSON object, got {type(row).__name__}.")
        rows.append(row)
    return rows


def _json_records(data: Any, label: str) -> list[dict[str, Any]]:
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data
    if isinstance(data, dict) and data and all(isinstance(column, list) for column in data.values()):
        lengths = {len(column) for column in data.values()}
        if len(lengths) == 1:
            size = lengths.pop()
            return [{key: column[i] for key, column in data.items()} for i in range(size)]
    raise ValueError(
        f"{label}: expected a JSON list of objects (one per row), an object of equal-length column lists, or "
        "JSON Lines."
    )


def load_hub(source: Source, config: str | None) -> Dataset:
    """``datasets.load_dataset(name, config, split=...)`` with clear errors."""
    import datasets

    where = f"{source.hub_name!r}" + (f" (config {config!r})" if config else "") + f", split {source.hub_split!r}"
    try:
        dataset = datasets.load_dataset(source.hub_name, config, split=source.hub_split)
    except ConnectionError as err:
        raise ValueError(
            f"could not reach the dataset hub to load {where} ({err}), and it is not in the local datasets cache. "
            "Download the files on a machine with network access and pass local paths (train='train.jsonl', "
            "test='test.jsonl'), or run prepare_data() where the hub is reachable."
        ) from None
    except FileNotFoundError as err:
        raise ValueError(
            f"the hub has no dataset {where} ({err}), and {source.hub_name!r} is no local file either. Check the "
            "name (e.g. 'openai/gsm8k') or the path."
        ) from None
    except ValueError as err:
        raise ValueError(
            f"cannot load {where} from the hub: {err}"
            + ("" if config else " (some datasets need `hub_config`, e.g. 'main' for openai/gsm8k)")
        ) from None
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"loading {where} gave a {type(dataset).__name__}, not a datasets.Dataset.")
    return dataset
