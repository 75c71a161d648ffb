"""Tests for ReasoningDataModule: sources, field layouts, ids, batches, invalid rows, hub errors, Trainer.fit."""

import csv
import json
import time
import warnings
from pathlib import Path

import datasets
import lightning as L  # noqa: N812
import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_premem import PreMemorizationCallback
from lightning_premem.data import FIELD_LAYOUTS, INVALID_REASONS, ReasoningDataModule
from lightning_premem.data.batching import IGNORE_INDEX
from lightning_premem.module import CausalLMModule
from lightning_premem.tokenization import char_tokenizer

GSM8K_TEST = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"


def gsm8k_rows(n, start=0):
    rows = []
    for i in range(start, start + n):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append({"question": f"What is {a}+{b}? (q{i})", "answer": f"{a}+{b}={a + b}\n#### {a + b}"})
    return rows


def math_rows(n):
    return [{"problem": f"Compute ${i}+1$.", "solution": f"We add: ${i}+1=\\boxed{{{i + 1}}}$."} for i in range(n)]


def quiet_setup(dm, stage="fit"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup(stage)
    return dm


def loader_ids(loader):
    return [i for batch in loader for i in batch["example_ids"].tolist()]


@pytest.fixture
def offline_hub(monkeypatch):
    """Make hub calls fail at once (as with HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1), whatever the network."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# ---------------------------------------------------------------------- sources


def write_source(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line is fine
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "json-columns":
        path.write_text(json.dumps({key: [r[key] for r in rows] for key in rows[0]}))
    elif kind == "json-lines":  # what datasets' Dataset.to_json writes, under a .json name
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [
        ("jsonl", ".jsonl"),
        ("json", ".json"),
        ("json-columns", ".json"),
        ("json-lines", ".json"),
        ("parquet", ".parquet"),
        ("csv", ".csv"),
    ],
)
def test_local_files(tmp_path, kind, suffix):
    rows = gsm8k_rows(5)
    path = write_source(tmp_path / f"train{suffix}", rows, kind)
    for train in (path, str(path)):
        dm = ReasoningDataModule(train)
        dm.setup("fit")
        assert dm.probe_examples("train") == [
            {"id": i, "question": r["question"], "solution": r["answer"]} for i, r in enumerate(rows)
        ]
        assert dm.invalid_rows["train"] == {reason: [] for reason in INVALID_REASONS}


@pytest.mark.parametrize("make", [datasets.Dataset.from_list, list, tuple])
def test_in_memory_sources(make):
    rows = gsm8k_rows(4)
    dm = ReasoningDataModule(make(rows), test=make(gsm8k_rows(2, start=10)))
    dm.setup("fit")
    assert [e["id"] for e in dm.probe_examples("train")] == [0, 1, 2, 3]
    assert dm.probe_examples("train")[2]["solution"] == rows[2]["answer"]
    assert [e["id"] for e in dm.probe_examples("test")] == [0, 1]
    assert dm.probe_examples("test")[1]["question"].endswith("(q11)")


def test_unreadable_sources(tmp_path):
    (tmp_path / "train.txt").write_text("x")
    with pytest.raises(ValueError, match=r"supported file types are \['.csv', '.json', '.jsonl', '.parquet'\]"):
        ReasoningDataModule(tmp_path / "train.txt")
    with pytest.raises(ValueError, match="is a folder"):
        ReasoningDataModule(tmp_path)
    with pytest.raises(ValueError, match="no such file, and not a hub dataset name"):
        ReasoningDataModule(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="no such file"):
        ReasoningDataModule(tmp_path / "missing")  # a Path is never a hub name
    with pytest.raises(TypeError, match="position 1 holds str"):
        ReasoningDataModule([{"question": "q", "answer": "#### 1"}, "row"])
    with pytest.raises(TypeError, match=r"pass one of its splits \(e.g. dataset\['train'\]\)"):
        ReasoningDataModule(datasets.DatasetDict({"train": datasets.Dataset.from_list(gsm8k_rows(2))}))
    with pytest.raises(TypeError, match="must be a file path, a hub name"):
        ReasoningDataModule(42)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl', line 2: each line must be a JSON object"):
        ReasoningDataModule(bad).setup("fit")
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        ReasoningDataModule(bad).setup("fit")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl' has no rows"):
        ReasoningDataModule(empty).setup("fit")
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    with pytest.raises(ValueError, match="expected a JSON list of objects"):
        ReasoningDataModule(scalar).setup("fit")


# ---------------------------------------------------------------------- field layouts and ids


def test_field_layouts():
    assert FIELD_LAYOUTS["gsm8k"] == {"question": "question", "solution": "answer"}
    assert FIELD_LAYOUTS["math"] == {"question": "problem", "solution": "solution"}
    rows = math_rows(3)
    dm = ReasoningDataModule(rows, fields="math", answer_kind="math")
    dm.setup("fit")
    assert dm.probe_examples("train")[1] == {"id": 1, "question": rows[1]["problem"], "solution": rows[1]["solution"]}

    custom = [
        {"uid": 100 + 3 * i, "q": r["question"], "a": r["answer"], "extra": i} for i, r in enumerate(gsm8k_rows(4))
    ]
    dm = ReasoningDataModule(custom, fields={"question": "q", "solution": "a", "id": "uid"}, batch_size=4)
    dm.setup("fit")
    assert [e["id"] for e in dm.probe_examples("train")] == [100, 103, 106, 109]
    assert sorted(loader_ids(dm.train_dataloader())) == [100, 103, 106, 109]
    # ids as digit strings (e.g. from CSV) are read as ints
    dm = ReasoningDataModule(
        [{**row, "uid": str(row["uid"])} for row in custom], fields={"question": "q", "solution": "a", "id": "uid"}
    )
    assert [e["id"] for e in dm.probe_examples("train")] == [100, 103, 106, 109]


def test_missing_columns_are_named(tmp_path):
    path = write_source(tmp_path / "math.jsonl", math_rows(2), "jsonl")
    with pytest.raises(ValueError) as info:
        ReasoningDataModule(path).setup("fit")  # GSM8K layout on MATH data
    message = str(info.value)
    assert "math.jsonl" in message and "'question'" in message and "['problem', 'solution']" in message
    with pytest.raises(ValueError, match=r"the train Dataset has no column 'uid' \(the 'id' field\)"):
        ReasoningDataModule(
            datasets.Dataset.from_list(gsm8k_rows(2)),
            fields={"question": "question", "solution": "answer", "id": "uid"},
        ).setup("fit")


def test_bad_id_columns():
    rows = [{"question": "q", "answer": "#### 1", "uid": u} for u in (3, -1, "x", 4)]
    fields = {"question": "question", "solution": "answer", "id": "uid"}
    with pytest.raises(ValueError, match=r"must hold ints >= 0; 2 rows do not \(first at positions \[1, 2\]\)"):
        ReasoningDataModule(rows, fields=fields).setup("fit")
    rows = [{"question": "q", "answer": "#### 1", "uid": u} for u in (3, 5, 3)]
    with pytest.raises(ValueError, match=r"must hold unique values; repeated: \[3\]"):
        ReasoningDataModule(rows, fields=fields).setup("fit")


def test_real_gsm8k_test_file_as_train_source():
    dm = ReasoningDataModule(GSM8K_TEST, max_length=4096, on_invalid="error")
    dm.setup("fit")
    assert len(dm.train_rows) == len(dm.train_features) == 1319
    assert [row["id"] for row in dm.train_rows] == list(range(1319))
    assert [f["example_id"] for f in dm.train_features] == list(range(1319))
    assert all(IGNORE_INDEX not in f["labels"][-5:] for f in dm.train_features)
    first = json.loads(GSM8K_TEST.read_text().splitlines()[0])
    assert dm.train_rows[0] == {"id": 0, "question": first["question"], "solution": first["answer"]}
    assert dm.invalid_rows["train"] == {reason: [] for reason in INVALID_REASONS}


# ---------------------------------------------------------------------- batches


@pytest.mark.parametrize(
    ("prompt_template", "target_template"),
    [("{question}\nAnswer:", " {solution}\nDone."), ("Q{id}: {question}\nA:", " {solution}\nEND")],
)
def test_batch_labels_mask_prompt_and_padding(prompt_template, target_template):
    rows = gsm8k_rows(7)
    rows[3]["question"] = "A much longer question, so that the others are padded: " + rows[3]["question"]
    dm = ReasoningDataModule(rows, batch_size=4, prompt_template=prompt_template, target_template=target_template)
    dm.setup("fit")
    tok = dm.tokenizer
    by_id = {e["id"]: e for e in dm.probe_examples("train")}
    seen = []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        for row, example_id in enumerate(batch["example_ids"].tolist()):
            example = by_id[example_id]
            prompt = prompt_template.format(**example)
            target = target_template.format(**example)
            n_prompt, n_target = len(tok(prompt)["input_ids"]), len(tok(target, add_special_tokens=False)["input_ids"])
            n = n_prompt + n_target
            ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
            assert (labels[:n_prompt] == IGNORE_INDEX).all()
            assert torch.equal(labels[n_prompt:n], ids[n_prompt:n])
            assert (labels[n:] == IGNORE_INDEX).all() and (ids[n:] == tok.pad_token_id).all()
            assert mask[:n].all() and not mask[n:].any()
            assert tok.decode(ids[labels != IGNORE_INDEX]) == target
            assert tok.decode(ids[:n_prompt]) == prompt
            seen.append(example_id)
    assert sorted(seen) == list(range(7))


def test_padding_uses_eos_when_the_tokenizer_has_no_pad_token():
    tok = char_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    rows = gsm8k_rows(2)
    rows[1]["question"] += " and some more words"
    dm = ReasoningDataModule(rows, tokenizer=tok, batch_size=2)
    assert dm.pad_token_id == tok.eos_token_id
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["input_ids"][padded] == tok.eos_token_id).all()
    assert tok.pad_token is None  # the tokenizer is not modified


# ---------------------------------------------------------------------- ids, splits, shuffling


def test_ids_survive_validation_carve_out_and_match_probe_examples():
    rows = gsm8k_rows(20)
    rows[4]["answer"] = "no final answer"  # skipped: ids of the others do not shift
    dm = quiet_setup(ReasoningDataModule(rows, validation_size=5, batch_size=3, seed=1))
    train_ids = [e["id"] for e in dm.probe_examples("train")]
    val_ids = [e["id"] for e in dm.probe_examples("validation")]
    assert len(val_ids) == 5 and len(train_ids) == 14
    assert sorted(train_ids + val_ids) == [i for i in range(20) if i != 4]
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)
    for example in dm.probe_examples("train") + dm.probe_examples("validation"):
        assert example["question"] == rows[example["id"]]["question"]
        assert example["solution"] == rows[example["id"]]["answer"]
    seen = loader_ids(dm.train_dataloader())
    assert sorted(seen) == train_ids  # one full pass: every training example exactly once
    assert loader_ids(dm.val_dataloader()) == val_ids
    assert [f["example_id"] for f in dm.train_features] == [r["id"] for r in dm.train_rows]

    again = quiet_setup(ReasoningDataModule(rows, validation_size=5, seed=1))
    assert [e["id"] for e in again.probe_examples("validation")] == val_ids
    other = quiet_setup(ReasoningDataModule(rows, validation_size=5, seed=2))
    assert [e["id"] for e in other.probe_examples("validation")] != val_ids
    fraction = quiet_setup(ReasoningDataModule(rows, validation_size=0.25))
    assert len(fraction.validation_rows) == round(0.25 * 19)


def test_max_train_and_test_examples_keep_seeded_subsets():
    dm = ReasoningDataModule(gsm8k_rows(30), test=gsm8k_rows(12), max_train_examples=10, max_test_examples=4)
    dm.setup("fit")
    train_ids = [e["id"] for e in dm.probe_examples("train")]
    test_ids = [e["id"] for e in dm.probe_examples("test")]
    assert len(train_ids) == 10 and train_ids == sorted(train_ids) and train_ids != list(range(10))
    assert len(test_ids) == 4 and set(test_ids) <= set(range(12))
    assert sorted(loader_ids(dm.train_dataloader())) == train_ids
    assert loader_ids(dm.test_dataloader()) == test_ids
    same = ReasoningDataModule(gsm8k_rows(30), test=gsm8k_rows(12), max_train_examples=10, max_test_examples=4)
    assert [e["id"] for e in same.probe_examples("train")] == train_ids
    assert [e["id"] for e in same.probe_examples("test")] == test_ids
    everything = ReasoningDataModule(gsm8k_rows(3), max_train_examples=10)
    assert len(everything.probe_examples("train")) == 3


def test_seeded_shuffle_is_deterministic():
    def order(seed):
        dm = ReasoningDataModule(gsm8k_rows(16), batch_size=4, seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return loader_ids(loader), loader_ids(loader)  # two epochs

    first = order(0)
    assert first == order(0)
    assert first[0] != first[1]  # each epoch draws a new order
    assert first[0] != sorted(first[0])
    assert order(1)[0] != first[0]


def test_distributed_sampler_shards_the_training_loader():
    dm = ReasoningDataModule(gsm8k_rows(10), batch_size=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    shards = []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        shards.append(loader_ids(_update_dataloader(loader, sampler)))  # what Lightning does under DDP
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_splits_setup_and_probe_protocol():
    dm = ReasoningDataModule(gsm8k_rows(4))
    assert dm.probe_examples("test") == [] and dm.test_dataloader() == []
    dm.setup("fit")
    features = dm.train_features
    dm.setup("fit")
    dm.setup("validate")
    assert dm.train_features is features  # built once
    assert dm.val_dataloader() == [] and dm.validation_rows == []
    examples = dm.probe_examples("train")
    examples[0]["question"] = "changed"
    assert dm.probe_examples("train")[0]["question"] != "changed"  # fresh copies
    with pytest.raises(ValueError, match=r"`split` must be one of \['train', 'validation', 'test'\], got 'dev'"):
        dm.probe_examples("dev")

    lazy = ReasoningDataModule(gsm8k_rows(4), test=gsm8k_rows(2))
    assert len(lazy.probe_examples("test")) == 2 and lazy.train_rows == []  # only what was asked for
    lazy.setup("test")
    assert len(next(iter(lazy.test_dataloader()))["example_ids"]) == 2


# ---------------------------------------------------------------------- invalid rows


def invalid_rows_fixture():
    rows = gsm8k_rows(12)
    rows[1]["question"] = ""
    rows[2]["question"] = None
    rows[3]["question"] = "   "
    rows[4]["answer"] = ""
    rows[5]["answer"] = 42
    rows[6]["answer"] = "no final answer"
    rows[7]["answer"] = "#### banana"
    rows[8]["question"] = "x" * 200
    del rows[9]["question"]
    return rows


def test_invalid_rows_are_reported_and_skipped():
    with pytest.warns(UserWarning) as record:
        dm = ReasoningDataModule(invalid_rows_fixture(), max_length=120)
        dm.setup("fit")
    assert dm.invalid_rows["train"] == {
        "missing_question": [1, 2, 3, 9],
        "missing_solution": [4, 5],
        "no_final_answer": [6, 7],
        "too_long": [8],
    }
    assert [e["id"] for e in dm.probe_examples("train")] == [0, 10, 11]
    message = str(record[0].message)
    assert "9 of the 12 rows of the train list are invalid" in message
    assert "missing_question: 4 (" in message and "first ids [1, 2, 3, 9]" in message
    assert "missing_solution: 2 (" in message and "no_final_answer: 2 (" in message
    assert "too_long: 1 (more than max_length=120" in message and "first ids [8]" in message
    assert "skipped" in message


def test_invalid_rows_raise_with_on_invalid_error():
    with pytest.raises(ValueError) as info:
        ReasoningDataModule(invalid_rows_fixture(), max_length=120, on_invalid="error").setup("fit")
    message = str(info.value)
    assert "9 of the 12 rows of the train list are invalid" in message and "first ids [1, 2, 3, 9]" in message
    assert "on_invalid='skip'" in message


def test_invalid_report_lists_the_first_five_ids_and_checks_every_split():
    rows = gsm8k_rows(10)
    for row in rows[1:9]:
        row["answer"] = "no answer"
    with pytest.warns(UserWarning, match=r"no_final_answer: 8 \(.*first ids \[1, 2, 3, 4, 5\]\)"):
        dm = ReasoningDataModule(rows, test=rows[:3])
        dm.setup("fit")
    with pytest.warns(UserWarning, match="2 of the 3 rows of the test list are invalid"):
        assert [e["id"] for e in dm.probe_examples("test")] == [0]
    assert dm.invalid_rows["test"]["no_final_answer"] == [1, 2]


def test_answer_kind_selects_the_final_answer_check():
    rows = math_rows(3)
    rows[1]["solution"] = "The answer is 2."  # no \boxed
    with pytest.warns(UserWarning, match="no_final_answer: 1"):
        dm = ReasoningDataModule(rows, fields="math", answer_kind="math")
        dm.setup("fit")
    assert dm.invalid_rows["train"]["no_final_answer"] == [1]
    unchecked = ReasoningDataModule(rows, fields="math", answer_kind=None, on_invalid="error")
    assert len(unchecked.probe_examples("train")) == 3
    with pytest.raises(ValueError, match=r"no_final_answer: 2 \(.*first ids \[0, 2\]"):  # \boxed is not "#### n"
        ReasoningDataModule(rows, fields="math", answer_kind="gsm8k", on_invalid="error").setup("fit")
    # the default ("auto") follows the field layout: MATH solutions are read from \boxed
    with pytest.warns(UserWarning, match="no_final_answer: 1"):
        auto = ReasoningDataModule(rows, fields="math")
        auto.setup("fit")
    assert auto.answer_kind == "math" and auto.invalid_rows["train"]["no_final_answer"] == [1]


def test_no_valid_rows_and_too_large_validation():
    with pytest.raises(ValueError, match="no valid rows"):
        quiet_setup(ReasoningDataModule([{"question": "q", "answer": "none"}]))
    with pytest.raises(ValueError, match="leaving none to train on"):
        ReasoningDataModule(gsm8k_rows(3), validation_size=3).setup("fit")


# ---------------------------------------------------------------------- the hub


def test_hub_unreachable_fails_fast_with_a_clear_message(offline_hub):
    dm = ReasoningDataModule("lightning-premem-tests/no-such-dataset", test="test", hub_config="main")
    started = time.perf_counter()
    for call in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(ValueError, match="could not reach the dataset hub") as info:
            call()
        assert "'lightning-premem-tests/no-such-dataset' (config 'main'), split 'train'" in str(info.value)
        assert "pass local paths" in str(info.value)
    assert time.perf_counter() - started < 5


def test_hub_sources_load_the_named_splits(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, *, split=None):
        calls.append((name, config, split))
        start = {"train": 0, "test": 100, "test[:2]": 200, "validation": 300}[split]
        return datasets.Dataset.from_list(gsm8k_rows(3, start=start))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = ReasoningDataModule("openai/gsm8k", hub_config="main", test="test", validation="test[:2]")
    dm.prepare_data()
    assert calls == [("openai/gsm8k", "main", s) for s in ("train", "test[:2]", "test")]
    dm.setup("fit")
    assert dm.probe_examples("train")[0]["question"].endswith("(q0)")
    assert dm.probe_examples("validation")[0]["question"].endswith("(q200)")
    assert [e["id"] for e in dm.probe_examples("test")] == [0, 1, 2]
    # a hub name for validation / test reads that split of it
    dm = ReasoningDataModule(gsm8k_rows(3), validation="someone/other-data")
    assert dm.probe_examples("validation")[0]["question"].endswith("(q300)")
    assert calls[-1] == ("someone/other-data", None, "validation")


def test_hub_name_resolution_errors(tmp_path):
    local = write_source(tmp_path / "train.jsonl", gsm8k_rows(2), "jsonl")
    with pytest.raises(ValueError, match="`test`='test': no such file, and not a hub dataset name"):
        ReasoningDataModule(local, test="test")  # split names only with a hub training source
    with pytest.raises(ValueError, match="applies to hub datasets only"):
        ReasoningDataModule(local, hub_config="main")


def test_tokenizer_argument(offline_hub, tmp_path):
    tok = char_tokenizer("abc")
    assert ReasoningDataModule(gsm8k_rows(1), tokenizer=tok).tokenizer is tok
    assert len(ReasoningDataModule(gsm8k_rows(1)).tokenizer) == len(char_tokenizer())
    saved = tmp_path / "tok"
    char_tokenizer().save_pretrained(saved)
    assert ReasoningDataModule(gsm8k_rows(1), tokenizer=str(saved)).tokenizer("ab")["input_ids"] == [4, 5]
    with pytest.raises(ValueError, match="cannot load a tokenizer from 'nobody-here/no-such-tokenizer'"):
        ReasoningDataModule(gsm8k_rows(1), tokenizer="nobody-here/no-such-tokenizer")
    with pytest.raises(TypeError, match="`tokenizer` must be 'char'"):
        ReasoningDataModule(gsm8k_rows(1), tokenizer=3)


# ---------------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 1}, ValueError, "`max_length` must be an int >= 2"),
        ({"max_length": 100.0}, TypeError, "`max_length` must be an int"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be an int >= 1"),
        ({"batch_size": True}, TypeError, "`batch_size` must be an int"),
        ({"num_workers": -1}, ValueError, "`num_workers` must be an int >= 0"),
        ({"seed": "0"}, TypeError, "`seed` must be an int"),
        ({"max_train_examples": 0}, ValueError, "`max_train_examples` must be an int >= 1"),
        ({"max_test_examples": 0}, ValueError, "`max_test_examples` must be an int >= 1"),
        ({"on_invalid": "drop"}, ValueError, "`on_invalid` must be 'skip' or 'error'"),
        ({"answer_kind": "aime"}, ValueError, "`answer_kind` must be 'auto', 'gsm8k', 'math' or None"),
        ({"hub_config": ""}, ValueError, "`hub_config` must be a non-empty string"),
        ({"validation_size": -1}, ValueError, "`validation_size` must be >= 0"),
        ({"validation_size": 1.0}, ValueError, "fraction of the training rows in"),
        ({"validation_size": "10%"}, TypeError, "`validation_size` must be an int"),
        ({"validation_size": 2, "validation": gsm8k_rows(2)}, ValueError, "either `validation`"),
        ({"fields": "aqua"}, ValueError, r"`fields` must be one of \['gsm8k', 'math'\]"),
        ({"fields": ["question"]}, TypeError, "`fields` must be 'gsm8k', 'math' or a mapping"),
        ({"fields": {"question": "q"}}, ValueError, "`fields` must name the 'solution' column"),
        ({"fields": {"question": "q", "solution": "a", "answer": "x"}}, ValueError, r"unknown: \['answer'\]"),
        ({"fields": {"question": "q", "solution": ""}}, ValueError, r"`fields\['solution'\]` must be a non-empty"),
        ({"prompt_template": "Answer:"}, ValueError, "`prompt_template` must contain {question}"),
        ({"target_template": " {answer}"}, ValueError, "`target_template` must contain {solution}"),
        ({"target_template": " {solution} {answer}"}, ValueError, "do not format"),
        ({"prompt_template": 3}, TypeError, "`prompt_template` must be a str"),
    ],
)
def test_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReasoningDataModule(gsm8k_rows(2), **kwargs)


def test_make_dataloader_rejects_shuffle_with_a_sampler():
    dm = ReasoningDataModule(gsm8k_rows(2))
    with pytest.raises(ValueError, match="either `shuffle=True` or a `sampler`"):
        dm.make_dataloader(dm.train_features, shuffle=True, sampler=torch.utils.data.SequentialSampler(range(2)))


def test_hyperparameters_hold_plain_arguments_only(tmp_path):
    path = write_source(tmp_path / "train.jsonl", gsm8k_rows(2), "jsonl")
    dm = ReasoningDataModule(path, fields="math", validation_size=1)
    assert dm.hparams["train"] == path and dm.hparams["fields"] == "math" and dm.hparams["validation_size"] == 1
    dm = ReasoningDataModule(datasets.Dataset.from_list(gsm8k_rows(2)), tokenizer=char_tokenizer())
    assert "train" not in dm.hparams and "tokenizer" not in dm.hparams


def test_configurable_from_plain_values(tmp_path):
    jsonargparse = pytest.importorskip("jsonargparse")
    path = write_source(tmp_path / "train.jsonl", gsm8k_rows(4), "jsonl")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(ReasoningDataModule, "data")
    config = parser.parse_object(
        {"data": {"train": str(path), "fields": {"question": "question", "solution": "answer"}, "validation_size": 0.5}}
    )
    dm = parser.instantiate(config).data
    assert isinstance(dm, ReasoningDataModule)
    assert len(dm.probe_examples("validation")) == 2


# ---------------------------------------------------------------------- Trainer.fit


def tiny_gpt2(tok):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def test_trainer_fit_with_the_callback_reading_the_datamodule(tmp_path):
    dm = ReasoningDataModule(gsm8k_rows(8), test=gsm8k_rows(3, start=50), validation_size=2, batch_size=4)
    module = CausalLMModule(tiny_gpt2(dm.tokenizer), dm.tokenizer, learning_rate=1e-3, warmup_ratio=0.0)
    callback = PreMemorizationCallback(num_samples=2, max_new_tokens=8, progress=False, log_dynamics=False)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2  # 6 training rows, batches of 4
    assert callback.probed_ids == [e["id"] for e in dm.probe_examples("train")]
    assert len(callback.probed_ids) == 6
    assert callback.history[0]["test_accuracy"] is not None
    assert "val/loss" in trainer.callback_metrics
    assert (tmp_path / "premem" / "history.npz").is_file()


def test_trainer_fit_without_a_validation_split(tmp_path):
    dm = ReasoningDataModule(gsm8k_rows(4), batch_size=4)
    module = CausalLMModule(tiny_gpt2(dm.tokenizer), dm.tokenizer, warmup_ratio=0.0)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1
    assert "val/loss" not in trainer.callback_metrics
    assert not [w for w in caught if "val" in str(w.message).lower()], [str(w.message) for w in caught]
