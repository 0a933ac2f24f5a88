"""`hf:` data paths read offline from a local copy of the Hub repository under
`<data dir>/hf/<owner>/<name>/`, in the Hub's own layout (README `configs:` block, parquet
files per split), with the same config and split names as on the Hub. The paper config's
data sections (configs/paper-zephyr.yaml) are loaded as written.

The local repositories are built here from the real GSM8K rows of the data directory (in
UltraFeedback-binarized's and openai/gsm8k's column layout); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsil_bench.core.loading import load_experiment
from gsil_bench.trainers.data import load_examples

REPO = Path(__file__).resolve().parents[1]


def _gsm8k_rows(data_dir: Path, n: int) -> list[dict]:
    with open(data_dir / "gsm8k" / "train.jsonl") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _write_repo(folder: Path, readme_configs: str, files: dict[str, list[dict]]) -> None:
    """A Hub data set repository: README.md with a `configs:` block, one parquet file per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for rel, rows in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / rel)
    (folder / "README.md").write_text(f"---\nconfigs:\n{readme_configs}---\n# local copy\n")


def _ultrafeedback(root: Path, rows: list[dict]) -> list[dict]:
    pairs = [{"prompt": r["question"], "prompt_id": str(i),
              "chosen": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}],
              "rejected": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": "I do not know."}],
              "score_chosen": 8.0, "score_rejected": 2.0} for i, r in enumerate(rows)]
    _write_repo(root / "hf" / "HuggingFaceH4" / "ultrafeedback_binarized", """- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: test_prefs
    path: data/test_prefs-*
""", {"data/train_prefs-00000-of-00001.parquet": pairs, "data/test_prefs-00000-of-00001.parquet": pairs[:1]})
    return pairs


def test_paper_config_hf_paths_read_the_local_hub_copy_offline(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached Hub copy can answer instead
    rows = _gsm8k_rows(data_dir, 5)
    pairs = _ultrafeedback(tmp_path, rows)
    shared = load_experiment(REPO / "configs" / "paper-zephyr.yaml").shared
    assert shared.train_data.path == "hf:HuggingFaceH4/ultrafeedback_binarized:train_prefs"

    demos = load_examples(shared.train_data, tmp_path)
    assert [ex.response for ex in demos] == [r["answer"] for r in rows]
    assert [ex.prompt[-1]["content"] for ex in demos] == [r["question"] for r in rows]
    assert demos[2].source == "hf:HuggingFaceH4/ultrafeedback_binarized:train_prefs: row 3"

    prefs = load_examples(shared.preference_data, tmp_path)
    assert [(ex.response, ex.rejected) for ex in prefs] == [(p["chosen"][1]["content"], "I do not know.") for p in pairs]

    # another split of the same repository, and a missing one
    from dataclasses import replace

    test_split = load_examples(replace(shared.train_data, path="hf:HuggingFaceH4/ultrafeedback_binarized:test_prefs"),
                               tmp_path)
    assert [ex.response for ex in test_split] == [rows[0]["answer"]]
    with pytest.raises(FileNotFoundError, match=r"cannot read the local copy .*ultrafeedback_binarized"):
        load_examples(replace(shared.train_data, path="hf:HuggingFaceH4/ultrafeedback_binarized:train_sft"), tmp_path)


def test_hf_path_with_a_config_name_reads_that_config(data_dir, tmp_path, monkeypatch):
    """openai/gsm8k's layout: configs `main` and `socratic`, each with train and test splits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    rows = _gsm8k_rows(data_dir, 4)
    socratic = [{**r, "answer": "Q: why? " + r["answer"]} for r in rows]
    _write_repo(tmp_path / "hf" / "openai" / "gsm8k", """- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
  - split: test
    path: socratic/test-*
""", {"main/train-00000-of-00001.parquet": rows, "main/test-00000-of-00001.parquet": rows[:2],
      "socratic/train-00000-of-00001.parquet": socratic, "socratic/test-00000-of-00001.parquet": socratic[:2]})
    from gsil_bench.core.config import DataConfig

    main = load_examples(DataConfig(path="hf:openai/gsm8k:main:train", format="gsm8k", limit=3), tmp_path)
    soc = load_examples(DataConfig(path="hf:openai/gsm8k:socratic:test", format="gsm8k"), tmp_path)
    assert [ex.response for ex in main] == [r["answer"] for r in rows[:3]]
    assert [ex.response for ex in soc] == [r["answer"] for r in socratic[:2]]


def test_two_local_copies_of_the_same_data_set_read_their_own_rows(data_dir, tmp_path, monkeypatch):
    """datasets caches a local folder by its name: a second data directory's copy of the same Hub data set (or a
    copy rewritten in place) was answered from the first one's cache. Each copy now reads its own rows."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "shared-cache")  # one cache for both
    shared = load_experiment(REPO / "configs" / "paper-zephyr.yaml").shared
    rows = _gsm8k_rows(data_dir, 6)
    first, second = _ultrafeedback(tmp_path / "one", rows[:3]), _ultrafeedback(tmp_path / "two", rows[3:])
    assert [ex.response for ex in load_examples(shared.train_data, tmp_path / "one")] == \
        [p["chosen"][1]["content"] for p in first]
    assert [ex.response for ex in load_examples(shared.train_data, tmp_path / "two")] == \
        [p["chosen"][1]["content"] for p in second]
    _ultrafeedback(tmp_path / "one", rows[:1])  # rewritten in place
    assert len(load_examples(shared.train_data, tmp_path / "one")) == 1
