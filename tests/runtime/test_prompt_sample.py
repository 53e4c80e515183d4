"""Re-calibration on recent traffic, the runtime side: the served-prompt sample (file format, the pod's ring and its
writer thread), the calibration's mix of recent and configured samples, and the serve flags that switch it on.
Pure but for one test that serves two prompts through the real engine."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")

from qfleet_runtime import calibrate, prompt_sample as ps, serve, triton_model  # noqa: E402
from qfleet_runtime.cli import build_parser  # noqa: E402
from qfleet_runtime.common import StepError  # noqa: E402
from qfleet_runtime.datasets import calibration_set  # noqa: E402
from qfleet_runtime.sample_writer import PromptSampler  # noqa: E402

TOK = "tok-a"
NOW = 1_000_000.0
DAY = 86400.0


def entry(when: float, *ids: int, tok: str = TOK) -> ps.Entry:
    return ps.Entry(when, tuple(ids), tok)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the file format --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    ('{"t": 5.5, "tok": "tok-a", "ids": [1, 2, 3]}', entry(5.5, 1, 2, 3)),
    ('{"t": 5, "ids": [7, 8]}', ps.Entry(5.0, (7, 8), "")),                # no fingerprint: matches no tokenizer
    ("", None),
    ("not json", None),
    ('{"t": 5, "tok": "x"}', None),                                           # no ids
    ('{"t": "soon", "ids": [1]}', None),
    ('{"t": NaN, "ids": [1]}', None),
    ('{"t": 5, "ids": [1, -2]}', None),                                       # a negative id is no token
    ('[1, 2]', None),
])
def test_a_line_decodes_to_an_entry_or_is_skipped(line: str, expected: ps.Entry | None) -> None:
    assert ps.decode(line) == expected


def test_an_entry_round_trips_through_its_line() -> None:
    e = entry(1767225600.25, 504, 2063, 314)
    assert ps.decode(ps.encode(e)) == e
    assert json.loads(ps.encode(e)) == {"t": 1767225600.25, "tok": TOK, "ids": [504, 2063, 314]}


@pytest.mark.parametrize(("host", "name"), [
    ("qfleet-llama-7c1f-5d9b8-x2x4q", "qfleet-llama-7c1f-5d9b8-x2x4q.jsonl"),
    ("../../etc/passwd", "_.._etc_passwd.jsonl"),                               # no way out of the directory
    ("", "pod.jsonl"),
])
def test_each_pod_writes_a_file_named_after_its_host(host: str, name: str) -> None:
    assert ps.pod_file(Path("/s"), host) == Path("/s") / name


def test_reading_merges_the_pods_most_recent_first_and_drops_what_expired(tmp_path: Path) -> None:
    (tmp_path / "pod-a.jsonl").write_text("\n".join(ps.encode(e) for e in (
        entry(NOW - 2 * DAY, 1, 1), entry(NOW - 10, 1, 2))) + "\n")
    (tmp_path / "pod-b.jsonl").write_text(ps.encode(entry(NOW - 5, 2, 1)) + "\ngarbage\n")
    (tmp_path / ".pod-c.jsonl.tmp123").write_text(ps.encode(entry(NOW, 9, 9)) + "\n")   # a write in progress
    (tmp_path / "notes.txt").write_text(ps.encode(entry(NOW, 8, 8)) + "\n")
    assert ps.read_dir(tmp_path, NOW, DAY) == [entry(NOW - 5, 2, 1), entry(NOW - 10, 1, 2)]
    assert ps.read_dir(tmp_path / "missing", NOW, DAY) == []


# -- choosing the recent samples --------------------------------------------------------------------------------------

@dataclass
class SelectCase:
    reason: str
    entries: list[ps.Entry]
    want: int
    max_len: int
    ids: tuple[tuple[int, ...], ...]
    usable: int
    other: int


@pytest.mark.parametrize("case", [
    SelectCase("most recent first, up to want", [entry(3, 1, 2), entry(2, 3, 4), entry(1, 5, 6)], 2, 8,
               ((1, 2), (3, 4)), 3, 0),
    SelectCase("duplicates count once", [entry(3, 1, 2), entry(2, 1, 2), entry(1, 5, 6)], 5, 8, ((1, 2), (5, 6)), 2, 0),
    SelectCase("truncated, then deduplicated", [entry(3, 1, 2, 3), entry(2, 1, 2, 4)], 5, 2, ((1, 2),), 1, 0),
    SelectCase("another tokenizer is skipped", [entry(3, 1, 2, tok="tok-b"), entry(2, 3, 4)], 5, 8, ((3, 4),), 1, 1),
    SelectCase("fewer than 2 tokens is no sample", [entry(3, 1), entry(2, 3, 4)], 5, 8, ((3, 4),), 1, 0),
    SelectCase("nothing wanted", [entry(3, 1, 2)], 0, 8, (), 1, 0),
    SelectCase("nothing there", [], 4, 8, (), 0, 0),
], ids=lambda c: c.reason)
def test_the_recent_samples_are_the_newest_distinct_prompts_of_this_tokenizer(case: SelectCase) -> None:
    chosen = ps.select(case.entries, case.want, case.max_len, TOK)
    assert (chosen.ids, chosen.usable, chosen.other_tokenizer) == (case.ids, case.usable, case.other)


@pytest.mark.parametrize(("samples", "share", "wanted"), [
    (10, 0.0, 0), (10, 1.0, 10), (10, 0.25, 3), (4, 0.5, 2), (3, 0.5, 2), (1, 0.4, 0), (1, 0.5, 1), (512, 0.3, 154),
])
def test_the_recent_share_is_rounded_half_up(samples: int, share: float, wanted: int) -> None:
    assert ps.recent_wanted(samples, share) == wanted


class FakeTokenizer:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def calibrate_namespace(sample: Path | None, samples: int = 4, share: float = 0.5, max_seq_len: int = 8
                        ) -> argparse.Namespace:
    argv = ["calibrate", "--revision", "r", "--kv-format", "fp8", "--artifacts", "/a", "--summary-file", "/s",
            "--model-uri", "hf://x", "--model-revision", "main", "--weights", "bf16", "--dataset", "builtin",
            "--samples", str(samples), "--max-seq-len", str(max_seq_len), "--recent-share", str(share)]
    return build_parser().parse_args(argv + (["--recent-sample", str(sample)] if sample else []))


@pytest.mark.parametrize(("stored", "share", "recent"), [
    (0, 0.5, 0),     # an empty directory: the dataset alone
    (1, 0.5, 1),     # fewer than wanted: what is there
    (5, 0.5, 2),     # round(4 * 0.5)
    (5, 1.0, 4),
])
def test_calibration_takes_its_share_from_the_recent_sample_and_fills_from_the_dataset(
        tmp_path: Path, stored: int, share: float, recent: int, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = FakeTokenizer({"a": 0, "b": 1})
    fingerprint = ps.tokenizer_fingerprint(tokenizer)
    now = time.time()
    (tmp_path / "pod.jsonl").write_text("".join(
        ps.encode(ps.Entry(now - i, (100 + i, 7, 7, 7, 7, 7, 7, 7, 7, 7), fingerprint)) + "\n" for i in range(stored)))
    args = calibrate_namespace(tmp_path, share=share)
    ids, report = calibrate.recent_samples(args, tokenizer)
    assert len(ids) == recent and report["used"] == recent
    assert all(len(s) == 8 for s in ids), "truncated to --max-seq-len"
    assert [s[0] for s in ids] == [100 + i for i in range(recent)], "most recent first"
    configured = calibration_set("builtin", args.samples).first(args.samples - recent)
    assert len(configured.texts) == args.samples - recent
    err = capsys.readouterr().err
    assert "100" not in err and "7, 7" not in err, "counts are logged, never ids or text"


@pytest.mark.parametrize("sample", [None, "missing"])
def test_without_a_recent_sample_calibration_uses_the_dataset_alone(tmp_path: Path, sample: str | None) -> None:
    args = calibrate_namespace(tmp_path / sample if sample else None)
    ids, report = calibrate.recent_samples(args, FakeTokenizer({"a": 0}))
    assert ids == () and report.get("used", 0) == 0


def test_a_sample_of_another_vocabulary_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "pod.jsonl").write_text(ps.encode(ps.Entry(
        time.time(), (5, 6, 7), ps.tokenizer_fingerprint(FakeTokenizer({"x": 0})))) + "\n")
    ids, report = calibrate.recent_samples(calibrate_namespace(tmp_path), FakeTokenizer({"y": 0}))
    assert ids == () and report["otherTokenizer"] == 1


# -- the pod's ring and its writer ------------------------------------------------------------------------------------

def sampler(directory: Path, clock: Clock, max_entries: int = 3, retention: float = DAY, flush_every: int = 1000,
            host: str = "pod-a", max_tokens: int = 16) -> PromptSampler:
    return PromptSampler(directory, max_entries, retention, TOK, max_tokens, host=host, flush_every=flush_every,
                         flush_seconds=3600, clock=clock)


def test_the_ring_keeps_the_last_distinct_prompts_and_a_repeat_moves_to_the_front(tmp_path: Path) -> None:
    clock = Clock()
    s = sampler(tmp_path, clock)
    for t, ids in enumerate(([1, 2], [3, 4], [1, 2], [5, 6], [7, 8])):
        clock.now = NOW + t
        s.offer(ids)
    s.flush()
    s.close()
    assert ps.read_file(tmp_path / "pod-a.jsonl") == [entry(NOW + 2, 1, 2), entry(NOW + 3, 5, 6),
                                                        entry(NOW + 4, 7, 8)]


def test_prompts_are_truncated_to_the_engines_length_and_expire_on_write(tmp_path: Path) -> None:
    clock = Clock()
    s = sampler(tmp_path, clock, max_entries=10, retention=100, max_tokens=3)
    s.offer(list(range(10)))
    clock.now += 60
    s.offer([4, 5])
    clock.now += 60                                  # the first is 120 s old, past the retention
    s.flush()
    s.close()
    assert ps.read_file(tmp_path / "pod-a.jsonl") == [entry(NOW + 60, 4, 5)]
    assert [p.name for p in tmp_path.iterdir()] == ["pod-a.jsonl"], "no temporary file is left"
    assert oct((tmp_path / "pod-a.jsonl").stat().st_mode & 0o777) == oct(0o640)


def test_the_writer_thread_flushes_after_k_prompts_without_the_request_waiting(tmp_path: Path) -> None:
    s = sampler(tmp_path, Clock(), max_entries=10, flush_every=3)
    for i in range(3):
        s.offer([i, i])
    assert s.wait_flushes(1, timeout=10)
    assert len(ps.read_file(tmp_path / "pod-a.jsonl")) == 3
    s.offer([9, 9])
    s.close()                                         # what is pending is written on close
    assert len(ps.read_file(tmp_path / "pod-a.jsonl")) == 4


def test_a_restarted_container_continues_from_its_own_file(tmp_path: Path) -> None:
    clock = Clock()
    first = sampler(tmp_path, clock)
    first.offer([1, 2])
    first.close()
    second = sampler(tmp_path, clock)
    second.offer([3, 4])
    second.close()
    assert [e.ids for e in ps.read_file(tmp_path / "pod-a.jsonl")] == [(1, 2), (3, 4)]


def test_a_flush_removes_the_files_of_pods_gone_longer_than_the_retention(tmp_path: Path) -> None:
    clock = Clock(now=time.time())
    gone, alive = tmp_path / "pod-old.jsonl", tmp_path / "pod-b.jsonl"
    for path in (gone, alive):
        path.write_text(ps.encode(entry(clock.now - 2 * DAY, 1, 2)) + "\n")
    os.utime(gone, (clock.now - 2 * DAY, clock.now - 2 * DAY))
    s = sampler(tmp_path, clock)
    s.offer([3, 4])
    s.close()
    assert not gone.exists() and alive.exists(), "a file written within the retention is another live pod's"


def test_a_directory_it_cannot_write_costs_a_warning_without_the_prompt(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    s = sampler(blocked / "sample", Clock())
    with caplog.at_level(logging.WARNING, logger="qfleet.serve"):
        s.offer([4242, 4243])
        s.close()
    assert s.failures == 1
    assert "prompt sample" in caplog.text and "4242" not in caplog.text


# -- serve's flags -----------------------------------------------------------------------------------------------------

def serve_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--revision", "r", "--kv-format", "fp8", "--artifacts", "/a",
                                      "--http-port", "1", "--grpc-port", "2", "--metrics-port", "3", *extra])


@pytest.mark.parametrize(("extra", "parameters"), [
    ((), {}),                                                                    # off unless asked
    (("--prompt-sample-max", "9"), {}),
    (("--prompt-sample-dir", "/s"), {"prompt_sample_dir": "/s", "prompt_sample_max": str(ps.DEFAULT_MAX_ENTRIES),
                                      "prompt_sample_retention": str(ps.DEFAULT_RETENTION_SECONDS)}),
    (("--prompt-sample-dir", "/s", "--prompt-sample-max", "64", "--prompt-sample-retention", "3600"),
     {"prompt_sample_dir": "/s", "prompt_sample_max": "64", "prompt_sample_retention": "3600"}),
])
def test_the_sample_is_opt_in_and_its_flags_reach_the_model(extra: tuple[str, ...], parameters: dict[str, str]
                                                             ) -> None:
    assert serve.prompt_sample_parameters(serve_args(*extra)) == parameters
    config = triton_model.engine_config({"kv_format": "bf16", "model_path": "/m"} | parameters)
    assert config.prompt_sample_dir == (Path("/s") if parameters else None)
    if parameters:
        assert config.prompt_sample_max == int(parameters["prompt_sample_max"])
        assert config.prompt_sample_retention == float(parameters["prompt_sample_retention"])


@pytest.mark.parametrize("extra", [("--prompt-sample-max", "0"), ("--prompt-sample-retention", "0")])
def test_a_sample_bounded_by_nothing_is_refused(extra: tuple[str, ...]) -> None:
    with pytest.raises(StepError, match="prompt-sample"):
        serve.prompt_sample_parameters(serve_args("--prompt-sample-dir", "/s", *extra))


# -- on the real engine -----------------------------------------------------------------------------------------------

def test_the_engine_samples_served_prompts_and_counts_out_of_range_values(model_dir: Path, tmp_path: Path) -> None:
    from qfleet.api import metrics as contract
    from qfleet_runtime import engine as eng

    sample = tmp_path / "sample"
    config = eng.EngineConfig(kv_format="fp8", model_path=model_dir, amax=((4.0, 4.0),) * 30, max_seq_len=256,
                              quality_share=0.0, prompt_sample_dir=sample, prompt_sample_max=8)
    engine = eng.Engine(config)
    engine.warm_up()
    prompts = ["The import statement combines two operations.", "A class definition is an executable statement."]
    try:
        for prompt in prompts:
            engine.request(prompt, 2)
    finally:
        engine.close()
    (path,) = ps.sample_files(sample)
    stored = ps.read_file(path)
    assert [e.ids for e in stored] == [tuple(engine.tokenize(p)) for p in prompts], "the warm-up is not sampled"
    assert {e.tokenizer for e in stored} == {ps.tokenizer_fingerprint(engine.tokenizer)}
    sink = engine.sink
    values, out = sink.counter(contract.KV_VALUES), sink.counter(contract.KV_OUT_OF_RANGE_VALUES)
    assert values == sink.counter(contract.KV_ENTRIES) * 64 > 0
    assert 0 < out <= sink.counter(contract.KV_FALLBACK_ENTRIES) * 64, "amax 4 is below SmolLM2's K range"
