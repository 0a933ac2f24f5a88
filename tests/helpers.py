"""Small helpers shared by tests: read data rows, write completions, the tiny training config, a
tokenizer that adds BOS (built offline) with zephyr's chat template, build and unpack the package
(wheel, sdist) from a source tree, and start a server process that is stopped whatever ends the test
run (`managed_server`)."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gsil_bench.core.io import append_jsonl, read_jsonl
from gsil_bench.core.loading import experiment_from_dict


def data_rows(data_dir: Path, rel: str) -> list[dict]:
    """The records of a JSONL file under the data directory."""
    return read_jsonl(data_dir / rel)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write `records` as a new JSONL file; return its path."""
    path.unlink(missing_ok=True)
    append_jsonl(path, records)
    return path


# Every registered method, GSIL members at a = 0.5, b = 0 (z = 0 when policy == reference).
ALL_METHODS = [
    {"loss": "sft"}, {"loss": "dpo"}, {"loss": "dpo-hinge"}, {"loss": "dpo-ipo"}, {"loss": "spin"},
    {"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}, {"loss": "gsil-brier", "params": {"a": 0.5, "b": 0.0}},
    {"loss": "gsil-hinge", "params": {"a": 0.5, "b": 0.0}}, {"loss": "gsil-kliep", "params": {"a": 0.5, "b": 0.0}},
    {"loss": "gsil-lsif", "params": {"a": 0.5, "b": 0.0}},
]


def build(kind: str, out: Path, src: Path) -> Path:
    """Build a "wheel" or an "sdist" of the source tree `src` into `out`, offline with this
    environment's setuptools (no build isolation); return the file."""
    code = f"import sys, setuptools.build_meta as b; print(b.build_{kind}(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def install_wheel(wheel: Path, target: Path) -> Path:
    """Unpack a pure-Python wheel into `target` (what pip install --target does); return `target`."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def forged_reply(body: str, *, at: float | None = None) -> str:
    """A hostile candidate's source: its `add` finds the reply descriptor (the only write-only pipe it holds) and
    writes its own frame of `body` (a Python expression giving bytes) there, then sleeps. `at`: seconds after the
    module loaded to wait before writing (a frame arriving just before the deadline)."""
    wait = f"    time.sleep(max(0.0, {at} - (time.monotonic() - START)))\n" if at is not None else ""
    return ("import fcntl, os, stat, struct, time\nSTART = time.monotonic()\n"
            "def add(a, b):\n"
            "    body = " + body + "\n" + wait +
            "    for fd in range(3, 64):\n"
            "        try:\n"
            "            if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & 3 == os.O_WRONLY:\n"
            "                os.write(fd, struct.pack('>I', len(body)) + body)\n"
            "        except OSError:\n"
            "            pass\n"
            "    time.sleep(60)\n")


TINY_SHARED = {  # the tiny CPU experiments' shared block: 4 GSM8K demonstrations, batch 2, short lengths
    "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
    "optimizer": {"lr": 1e-3},  # every checkpoint's weights move
    "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "logprob_chunk": 32},
    "generation": {"max_new_tokens": 6, "batch_size": 4},
}


def experiment_dict(model, name: str, methods: list[dict], **shared) -> dict:
    """A tiny experiment as plain YAML data (TINY_SHARED with `shared` merged over it), reported against SFT."""
    return {"name": name, "shared": _merge({"model": str(model), **TINY_SHARED}, shared), "methods": methods,
            "report": {"baseline": "sft", "bootstrap": 50}}


def make_cfg(model, methods, **shared):
    """A tiny CPU experiment on GSM8K demonstrations (4 examples, batch 2, 2 steps)."""
    base = {
        "model": str(model),
        "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "constant", "warmup_ratio": 0.0},
        "train": {"batch_size": 2, "max_length": 96, "max_prompt_length": 64, "logprob_chunk": 32, "max_steps": 2},
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "iterations": 1,
    }
    return experiment_from_dict({"name": "t", "methods": methods, "shared": _merge(base, shared)})


# GSIL gsil/alignment/data.py:13 (alignment-handbook's zephyr template), copied verbatim
ZEPHYR_TEMPLATE = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"  # noqa: E501


def zeroed_llama(tokenizer):
    """A one-layer Llama over `tokenizer`'s vocabulary with every weight zero but the final norm's (1):
    the tests that need a model with set outputs write their embedding and head rows into it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
    return model


def bos_tokenizer(*, truncation_side: str = "right", chat_template: str | None = ZEPHYR_TEMPLATE):
    """A Llama-style tokenizer that ADDS a BOS token, as zephyr's (Mistral's) does: `<unk>` 0, `<s>` 1, `</s>` 2,
    then byte-level BPE over the 256 bytes (a few merges, so tokens are not all single bytes); its post-processor
    prepends `<s>` whenever special tokens are added (the tokenizer's default), and `</s>` in text is the EOS
    token. zephyr's chat template. SmolLM2's tokenizer, the suite's usual one, adds no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", truncation_side=truncation_side)
    fast.chat_template = chat_template
    return fast



# --- servers a test starts -------------------------------------------------------------------------
# A server (llama.cpp's, vLLM's with its engine processes) runs in a session of its own, so Ctrl-C in
# the terminal does not reach it, and a fixture's `finally` runs only when pytest ends in order: a
# SIGTERM'd or killed pytest runs none. So every server runs under a watchdog (tests/watchdog.py), the
# leader of the server's process group, which reads a pipe from this test process: when the pipe
# closes, because the fixture stopped the server or because this process ended however it did
# (SIGTERM, SIGINT, SIGKILL, os._exit: the kernel closes its files), the watchdog stops the group
# by its id, the watchdog's own pid (SIGTERM, SIGKILL after a grace period): the server and every
# process it started, nothing found by name.

WATCHDOG = Path(__file__).resolve().parent / "watchdog.py"


@dataclass
class Server:
    """A server started by `start_server`: `pid` is its process group's (its watchdog's)."""

    proc: subprocess.Popen
    pipe: int  # the write end of the watchdog's stdin: closing it stops the server

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 40.0) -> None:
        """Stop the server and every process it started; wait for them."""
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # the watchdog itself hangs: end its group here
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_server(argv: Sequence[str], log: Path, env: dict[str, str] | None = None, grace: float = 20.0) -> Server:
    """Start `argv` (stdout and stderr to `log`) under a watchdog: stopped by `Server.stop`, or when this
    process ends, however it ends (SIGTERM first, SIGKILL `grace` seconds later)."""
    read, write = os.pipe()  # not inherited by other children (PEP 446): only this watchdog holds the read end
    try:
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, str(WATCHDOG), str(grace), "--", *argv], stdin=read, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return Server(proc, write)


@contextlib.contextmanager
def managed_server(argv: Sequence[str], log: Path, *, ready: str, timeout: float = 120.0,
                   env: dict[str, str] | None = None) -> Iterator[Server]:
    """A server for the block (`start_server`), waited for until the URL `ready` answers, stopped after.
    A server that exits first, or does not answer in `timeout` s, fails the test with its log's tail."""
    import pytest

    server = start_server(argv, log, env)
    try:
        deadline = time.time() + timeout
        while True:
            if not server.running():
                pytest.fail(f"{' '.join(argv[:3])} ... exited early (status {server.proc.returncode}):\n"
                            f"{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(ready, timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"{ready} did not answer in {timeout:g} s:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield server
    finally:
        server.stop()
