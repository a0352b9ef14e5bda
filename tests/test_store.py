"""The store: its id and schema upgrade, which checkpoints a store resumes, who owns a running run,
and read commands that never write."""

import ctypes
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

import rethink
from rethink import api
from rethink.cli import main
from rethink.errors import UserError
from rethink.spec import RunSpec, from_dict
from rethink.store import SCHEMA_VERSION, Store

SPEC = dict(dataset="digits", train_size=200, model="mlp", hidden=[32], lr=0.1, epochs=4, stop_on_fit=False)
RUN = [
    "run",
    "--dataset",
    "digits",
    "--train-size",
    "200",
    "--model",
    "mlp",
    "--hidden",
    "32",
    "--epochs",
    "4",
    "--quiet",
]

# The schema of version 1 stores, as rethink wrote it before stores had an id and runs an owner.
V1_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, spec TEXT NOT NULL, summary TEXT,
    created REAL NOT NULL, updated REAL NOT NULL, package_version TEXT, git_commit TEXT,
    data_checksum TEXT, device TEXT, num_params INTEGER);
CREATE TABLE evals (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL, epoch REAL, seconds REAL, lr REAL, train_loss REAL, train_acc REAL, test_loss REAL,
    test_acc REAL, corrupted_acc_noisy REAL, corrupted_acc_true REAL, clean_acc REAL,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE recipes (
    name TEXT NOT NULL, scale TEXT NOT NULL, options TEXT NOT NULL, run_ids TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (name, scale, options));
CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    step INTEGER NOT NULL, loss REAL, PRIMARY KEY (run_id, step)) WITHOUT ROWID;
INSERT INTO runs VALUES ('r1', 'fitted', '{"dataset": "digits"}', '{"train_acc": 1.0}', 1.0, 2.0, '0.1', NULL,
                         'abc', 'cpu', 10);
INSERT INTO evals (run_id, step, train_acc) VALUES ('r1', 0, 0.1), ('r1', 5, 1.0);
PRAGMA user_version = 1;
"""


def snapshot(folder) -> dict:
    """Every file in ``folder`` with its bytes and modification time."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def test_a_version_1_store_is_read_as_it_is_and_upgraded_by_a_writer(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    before = snapshot(tmp_path)
    reader = Store(str(path), readonly=True)
    assert [(r["run_id"], r["state"]) for r in reader.runs()] == [("r1", "fitted")]
    assert reader.store_id is None and [e["step"] for e in reader.evals("r1")] == [0, 5]
    reader.close()
    assert snapshot(tmp_path) == before, "reading does not upgrade"
    writer = Store(str(path))
    assert writer.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert len(writer.store_id) == 32 and writer.get_run("r1")["summary"] == {"train_acc": 1.0}
    assert [e["train_acc"] for e in writer.evals("r1")] == [0.1, 1.0]
    writer.close()
    again = Store(str(path))
    assert again.store_id == writer.store_id, "the id is created once and kept"
    assert Store(str(tmp_path / "other.sqlite")).store_id != writer.store_id


def test_a_version_2_store_gains_the_measures_table_and_keeps_its_runs(tmp_path):
    """Version 2 (store id, owners; no measures): a reader sees no measures and changes nothing, a
    writer upgrades it in place and can then store measures for its old runs."""
    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA.replace("PRAGMA user_version = 1;", ""))
    db.executescript(
        "ALTER TABLE runs ADD COLUMN owner_pid INTEGER; ALTER TABLE runs ADD COLUMN owner_host TEXT; "
        "ALTER TABLE runs ADD COLUMN owner_started INTEGER; "
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('store_id', 'abc'); PRAGMA user_version = 2;"
    )
    db.close()
    before = snapshot(tmp_path)
    reader = Store(str(path), readonly=True)
    assert reader.version == 2 and reader.measures() == [] and reader.store_id == "abc"
    reader.close()
    assert snapshot(tmp_path) == before, "reading does not upgrade"
    writer = Store(str(path))
    assert writer.db.execute("PRAGMA user_version").fetchone()[0] == 4 and writer.store_id == "abc"
    assert writer.examples("r1") == [] and writer.examples_bytes() == {}  # the v4 table, empty
    writer.record_measures("r1", {"margin": 0.5, "margins": [0.1, 0.9], "sigma": None}, {"subset": 100})
    writer.record_measures("r1", {"margin": 0.25}, {"subset": 50})
    got = {(m["name"], m["options"]["subset"]): m["value"] for m in writer.measures("r1")}
    assert got == {("margin", 100): 0.5, ("margins", 100): [0.1, 0.9], ("sigma", 100): None, ("margin", 50): 0.25}
    assert writer.measures("other") == [] and len(writer.measures()) == 4


def test_a_new_store_beside_another_trains_its_runs_afresh(tmp_path, capsys):
    """The runs of a new store in the folder of another are trained, not 'resumed' from the
    other's checkpoints (which copied their end and time to fit)."""
    first = rethink.run(SPEC, str(tmp_path / "a.sqlite"), checkpoint_interval=0)
    capsys.readouterr()
    second = rethink.run(SPEC, str(tmp_path / "b.sqlite"), checkpoint_interval=0)
    assert "resuming" not in capsys.readouterr().err
    assert not second.cached and len(second.step_losses) == len(first.step_losses) == 8
    assert second.summary["train_seconds"] != first.summary["train_seconds"], "measured anew"
    assert os.listdir(tmp_path / "a.checkpoints") == os.listdir(tmp_path / "b.checkpoints") == [f"{first.run_id}.pt"]


def test_a_shared_checkpoint_folder_keeps_each_stores_checkpoint(tmp_path, capsys):
    shared = str(tmp_path / "ckpt")
    first = rethink.run(SPEC, str(tmp_path / "a.sqlite"), checkpoint_dir=shared, checkpoint_interval=0)
    theirs = snapshot(shared)
    capsys.readouterr()
    rethink.run(SPEC, str(tmp_path / "b.sqlite"), checkpoint_dir=shared, checkpoint_interval=0)
    err = capsys.readouterr().err
    assert "belongs to another store" in err and "resuming" not in err
    b_id = Store(str(tmp_path / "b.sqlite")).store_id
    assert sorted(os.listdir(shared)) == sorted([f"{first.run_id}.pt", f"{first.run_id}.{b_id}.pt"])
    assert snapshot(shared)[f"{first.run_id}.pt"] == theirs[f"{first.run_id}.pt"], "the other store's file is kept"


def interrupt_after(step):
    def progress(s, total, row):
        if s >= step:
            raise KeyboardInterrupt

    return progress


def test_a_store_copied_with_its_checkpoints_resumes(tmp_path, capsys):
    spec = {**SPEC, "epochs": 8}
    reference = rethink.run(spec, store=None)
    here, there = tmp_path / "here", tmp_path / "there"
    with pytest.raises(KeyboardInterrupt):
        rethink.run(spec, str(here / "s.sqlite"), checkpoint_interval=0, on_progress=interrupt_after(6))
    shutil.copytree(here, there)
    shutil.rmtree(here)
    capsys.readouterr()
    resumed = rethink.run(spec, str(there / "s.sqlite"), checkpoint_interval=0)
    assert "resuming run" in capsys.readouterr().err
    assert resumed.step_losses == reference.step_losses


def test_only_an_unfinished_checkpoint_of_this_store_run_and_data_is_resumed(tmp_path):
    spec = RunSpec(**SPEC)
    path = str(tmp_path / "c.pt")
    state = {"run_id": spec.run_id, "data_checksum": "d", "store_id": "s", "epoch": 2, "result": {"steps": 4}}
    cpu = torch.device("cpu")
    for change, resumed in [
        ({}, True),
        ({"finished": True}, False),
        ({"finished": False}, True),
        ({"store_id": "other"}, False),
        ({"store_id": None}, False),
        ({"run_id": "other"}, False),
        ({"data_checksum": "other"}, False),
    ]:
        torch.save({**state, **change}, path)
        assert (api.load_checkpoint(path, spec, "d", cpu, "s") is not None) == resumed, change


class RunsCode:
    """Unpickling this runs a shell command: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    spec, store_id = RunSpec(**SPEC), Store(store).store_id
    marker, crafted = tmp_path / "ran", tmp_path / "s.checkpoints" / f"{spec.run_id}.pt"
    crafted.parent.mkdir()
    torch.save({"run_id": spec.run_id, "store_id": store_id, "epoch": 1, "payload": RunsCode(marker)}, crafted)
    with pytest.raises(UserError) as refused:  # the store's own checkpoint, read to see whose it is
        rethink.run(SPEC, store, checkpoint_interval=0)
    assert f"checkpoint {crafted} is refused" in str(refused.value) and "could run code" in str(refused.value)
    assert "system" in str(refused.value), "the message names what the file would have called"
    with pytest.raises(UserError, match="is refused"):  # and where a run resumes from it
        api.load_checkpoint(str(crafted), spec, "d", torch.device("cpu"), store_id)
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    crafted.unlink()  # what the message says to do; a rethink checkpoint then resumes as ever
    with pytest.raises(KeyboardInterrupt):
        rethink.run(SPEC, store, checkpoint_interval=0, on_progress=interrupt_after(4))
    capsys.readouterr()
    assert rethink.run(SPEC, store, checkpoint_interval=0).status == "budget"
    assert "resuming run" in capsys.readouterr().err


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def owner_of(store):
    if not os.path.exists(store):
        return None
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        row = db.execute("SELECT status, owner_pid FROM runs").fetchone()
        db.close()
        return row
    except sqlite3.OperationalError:
        return None


def test_a_live_run_is_not_trained_twice_and_a_killed_one_shows_interrupted(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    long = ["--epochs", "100000", "--no-stop-on-fit"]  # runs until it is killed
    other = subprocess.Popen(
        [sys.executable, "-m", "rethink", *RUN, *long, "--store", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: owner_of(store) == ("running", other.pid)), "the other process claims the run"
        capsys.readouterr()
        assert main([*RUN, *long, "--store", store]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"process {other.pid}" in err and "kill" in err, err
        grid = tmp_path / "g.toml"
        grid.write_text(
            'seeds = 2\n[base]\ndataset = "digits"\ntrain_size = 200\nmodel = "mlp"\nhidden = [32]\n'
            "epochs = 100000\nstop_on_fit = false\n"
        )
        assert main(["sweep", str(grid), "--store", store, "--quiet"]) == 2
        assert f"process {other.pid}" in capsys.readouterr().err
        assert len(Store(store, readonly=True).runs()) == 1, "the sweep refused before queueing its other run"
        assert main(["runs", "--store", store]) == 0
        assert "running" in capsys.readouterr().out
    finally:
        other.kill()
        other.wait()
    (row,) = Store(store, readonly=True).runs()
    assert row["status"] == "running" and row["state"] == "interrupted"
    assert main(["runs", "--store", store]) == 0
    assert "interrupted" in capsys.readouterr().out
    db = Store(store)
    api.start(db, from_dict(row["spec"]))  # the run is free to claim now that its process is gone
    assert db.get_run(row["run_id"])["owner"]["owner_pid"] == os.getpid()
    db.db.execute("UPDATE runs SET owner_host = 'elsewhere'")
    assert db.get_run(row["run_id"])["state"] == "running (host elsewhere)"


@pytest.fixture(scope="module")
def one_run_store(tmp_path_factory):
    """A folder holding a store (WAL mode, closed) with one finished run."""
    folder = tmp_path_factory.mktemp("one")
    result = rethink.run(SPEC, str(folder / "s.sqlite"))
    return folder, result.run_id


def test_read_commands_leave_the_store_file_as_it_was(one_run_store, tmp_path, capsys):
    folder, run_id = one_run_store
    store = str(folder / "s.sqlite")
    before = snapshot(folder)["s.sqlite"]
    assert main(["runs", "--store", store]) == 0 and run_id in capsys.readouterr().out
    assert main(["export", "--store", store, "--out", str(tmp_path / "m.csv")]) == 0
    assert main(["report", "--store", store, "--out", str(tmp_path / "r.html")]) == 0
    assert snapshot(folder)["s.sqlite"] == before, "bytes and modification time unchanged"


def test_a_store_that_is_missing_or_a_folder_or_a_run_not_in_it(tmp_path, one_run_store, capsys):
    for argv, says in [
        (["runs", "--store", str(tmp_path / "typo.sqlite")], "does not exist"),
        (["report", "--store", str(tmp_path / "missing" / "x.sqlite")], "does not exist"),
        (["export", "--store", str(tmp_path / "typo.sqlite")], "does not exist"),
        (["runs", "--store", str(tmp_path)], "is a folder"),
        ([*RUN, "--store", str(tmp_path)], "is a folder"),
        (["export", "--store", str(one_run_store[0] / "s.sqlite"), "--run-id", "nope"], "run nope is not in"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert says in capsys.readouterr().err
    assert os.listdir(tmp_path) == [], "nothing was created"


def bound_by_permissions():
    """A ``preexec_fn`` for a subprocess that file permissions bind even when the tests run as root:
    it drops the capabilities that override them (DAC override, DAC read-search) from the bounding
    set, so the program it executes has neither."""
    if os.geteuid() != 0:
        return None

    def drop():
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0):  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "cannot drop a capability")

    return drop


def rethink_bound(*argv):
    return subprocess.run(
        [sys.executable, "-m", "rethink", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=bound_by_permissions(),
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drops Linux capabilities")
def test_a_read_only_store_is_read_and_a_read_only_folder_named(tmp_path):
    ro = tmp_path / "ro"
    run_id = rethink.run(SPEC, str(ro / "s.sqlite")).run_id
    assert sorted(os.listdir(ro)) == ["s.checkpoints", "s.sqlite"], "a closed WAL store: no -wal, no -shm"
    os.chmod(ro / "s.sqlite", 0o666)
    os.chmod(ro, 0o555)
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(ro / 'x')!r}, 'w')"], capture_output=True, preexec_fn=bound_by_permissions()
    )
    if probe.returncode == 0:
        os.chmod(ro, 0o755)
        pytest.skip("file permissions do not bind here")
    try:
        p = rethink_bound(*RUN, "--store", str(ro / "s.sqlite"))  # a writer: SQLite needs the folder for its journal
        assert p.returncode == 2 and f"its folder {ro} is not writable" in p.stderr, p.stderr
        os.chmod(ro / "s.sqlite", 0o444)
        before = snapshot(ro)
        p = rethink_bound("runs", "--store", str(ro / "s.sqlite"))
        assert p.returncode == 0 and run_id in p.stdout, p.stderr
        p = rethink_bound("export", "--store", str(ro / "s.sqlite"), "--what", "runs")
        assert p.returncode == 0 and run_id in p.stdout, p.stderr
        p = rethink_bound("report", "--store", str(ro / "s.sqlite"), "--out", str(tmp_path / "r.html"))
        assert p.returncode == 0 and (tmp_path / "r.html").exists(), p.stderr
        assert snapshot(ro) == before, "no file written, none created (no -wal, no -shm)"
    finally:
        os.chmod(ro, 0o755)
