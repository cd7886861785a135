"""The diagnosis as a run goes (`runs/watch.py`): after each probe round the new or changed findings are printed,
and sent as alerts only when asked (ldyn's trainer: `probe.alerts`; the callback: `alerts=`)."""

import json

from helpers import tiny, trainer_args
from test_diagnose import run_of, squeeze

from ldyn import cli
from ldyn.config import dump_config
from ldyn.runs import watch
from ldyn.runs.diagnose import Finding
from ldyn.runs.trackers import Trackers


def write_run(path, run):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_config(run.config))
    (path / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.probes))


def test_a_finding_is_printed_once_and_again_when_its_numbers_change(tmp_path, capsys):
    w = watch.Watch(tmp_path / "run")
    write_run(tmp_path / "run", run_of(squeeze()))
    first = w.after_round(10)
    assert "squeezing" in [f.key for f in first]
    assert "ldyn: step 10: squeezing effect: DPO stage" in capsys.readouterr().err
    assert w.after_round(10) == [] and capsys.readouterr().err == ""  # nothing new: nothing printed
    write_run(tmp_path / "run", run_of(squeeze(argmax_rise=6.0)))
    assert "squeezing" in [f.key for f in w.after_round(12)]


class Recorder:
    def __init__(self):
        self.alerts = []

    def alert(self, title, text):
        self.alerts.append((title, text))


class Refuses:
    def alert(self, title, text):
        raise RuntimeError("offline")


def test_an_alert_reaches_every_tracker_and_a_refusal_is_a_warning(capsys):
    recorder = Recorder()
    Trackers([Refuses(), recorder]).alert("squeezing effect", "y⁻ fell")
    assert recorder.alerts == [("squeezing effect", "y⁻ fell")]
    assert "ldyn: warning: Refuses took no alert (offline)" in capsys.readouterr().err


FINDING = Finding("squeezing", "dpo", "squeezing effect", "y⁻ fell 9 nats", 1.0, "the mass moves", ["extend"], {})


def test_ldyn_run_sends_alerts_only_when_asked(tmp_path, monkeypatch, capsys):
    sent = []
    monkeypatch.setattr(watch, "diagnose", lambda run: [FINDING])  # a finding from the first round on
    monkeypatch.setattr(Trackers, "alert", lambda self, title, text: sent.append((title, text)))
    assert cli.main(tiny(tmp_path / "quiet")) == 0
    assert "ldyn: step 0: squeezing effect: y⁻ fell 9 nats" in capsys.readouterr().err and sent == []
    assert cli.main(tiny(tmp_path / "loud", "probe.alerts=true")) == 0
    assert sent == [("squeezing effect", watch.alert_text(FINDING))]  # once: the finding never changed


def test_the_callback_prints_the_findings_and_offers_them_to_its_trainers_trackers(tmp_path, monkeypatch, capsys):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from ldyn.integrations import LearningDynamicsCallback, trainer_log
    from ldyn.models.pretrained import byte_tokenizer, frozen_copy, prepare, tiny_model

    sent = []
    monkeypatch.setattr(watch, "diagnose", lambda run: [FINDING])
    monkeypatch.setattr(trainer_log, "send_alert", lambda callback, title, text: sent.append(type(callback).__name__))
    model, tokenizer = prepare(tiny_model(byte_tokenizer()), byte_tokenizer())
    pairs = [{"prompt": f"Q{i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(4)]
    args = DPOConfig(**trainer_args(tmp_path, max_steps=2), max_length=64)
    callback = LearningDynamicsCallback(every=1, n=2, alerts=True, figures=False)
    data = Dataset.from_list(pairs)
    trainer = DPOTrainer(model, frozen_copy(model), args=args, train_dataset=data, processing_class=tokenizer)
    trainer.add_callback(callback)
    trainer.train()
    assert capsys.readouterr().err.count("ldyn: step 0: squeezing effect: y⁻ fell 9 nats") == 1
    assert "LearningDynamicsCallback" in sent  # offered to each of the trainer's callbacks, which keeps the trackers
