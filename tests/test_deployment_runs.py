"""Deployments (deployments/prefect.yaml) on a real Prefect server with real workers.

The slow tests start everything for real, on loopback: ``prefect server start`` (temporary
PREFECT_HOME and sqlite DB), moto's S3 server, the work pools and limit from
``deployments/setup.sh``, one process worker per pool, ``prefect deploy --all`` and
``selftrain deploy-schema`` (typed plugin options, enforced by the server); they trigger
the pipeline deployment through the REST API as the UI does and read the outcome back through
the API and S3. Every process started here is stopped by its PID (process group) at the end.
The deployment file itself and the stage placement logic are checked without a server in
``tests/test_deployments.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "configs" / "tiny.yaml"
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
PREFECT = str(Path(sys.executable).with_name("prefect"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop a process started with start_new_session=True, and its process group, by PID."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


class Service:
    """A Prefect server, workers and the CLI, all on loopback with a temporary PREFECT_HOME."""

    def __init__(self, home: Path):
        import httpx

        self.home = home
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PREFECT_API_REQUEST_TIMEOUT": "120",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_CLI_COLORS": "false",
            "PREFECT_CLI_WRAP_LINES": "false",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "selftrain",
            "SELFTRAIN_CACHE": str(home / "selftrain-cache"),  # model mirrors, pretraining checkpoints
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        })
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.http = httpx.Client(base_url=self.api_url, timeout=60)

    # processes
    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "ab")
        proc = subprocess.Popen([PREFECT, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        p = self.home / f"{name}.log"
        return p.read_text(errors="replace")[-tail:] if p.exists() else ""

    def run(self, *argv: str, timeout: float = 300) -> str:
        res = subprocess.run(list(argv), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res.stdout

    def stop_all(self) -> None:
        self.kill_flow_run_processes()
        for proc in reversed(list(self.procs.values())):
            _stop(proc)
        self.http.close()

    def kill_flow_run_processes(self) -> None:
        """Flow-run processes live in their own process groups: stop any still running, by PID."""
        try:
            runs = self.post("/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}})
        except Exception:
            return
        for r in runs:
            pid = _flow_run_pid(r)
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # REST API
    def request(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """One API call; a 503 (the server's SQLite database busy under load) is retried a few
        times with backoff, as a person would click again in the UI."""
        for attempt in range(6):
            r = self.http.request(method, path, json=body)
            if r.status_code != 503:
                return r
            time.sleep(1.5 * (attempt + 1))
        return r

    def get(self, path: str):
        r = self.request("GET", path)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict):
        r = self.request("POST", path, body)
        assert r.status_code < 300, f"POST {path}: {r.status_code} {r.text[:2000]}"
        return r.json()

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = self.procs["server"]
            assert proc.poll() is None, f"prefect server exited:\n{self.log('server')}"
            try:
                if self.http.get("/health", timeout=2).status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(0.5)
        raise AssertionError(f"prefect server not healthy after {timeout} s:\n{self.log('server')}")

    def wait_workers(self, pools: list[str], timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            online = {p for p in pools
                      if any(w["status"] == "ONLINE" for w in self.post(f"/work_pools/{p}/workers/filter", {}))}
            if online == set(pools):
                return
            for name, proc in self.procs.items():
                assert proc.poll() is None, f"{name} exited:\n{self.log(name)}"
            time.sleep(1)
        raise AssertionError(f"workers not online after {timeout} s")

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/{name}")

    def trigger(self, deployment: str, parameters: dict) -> str:
        """What the UI's 'Custom run' does: POST /deployments/{id}/create_flow_run."""
        dep = self.deployment(deployment)
        run = self.post(f"/deployments/{dep['id']}/create_flow_run",
                        {"parameters": parameters, "state": {"type": "SCHEDULED", "message": "Run from the UI"}})
        return run["id"]

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def children(self, run_id: str) -> list[dict]:
        runs = self.post("/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}},
                                               "sort": "EXPECTED_START_TIME_ASC"})
        names = {}
        for r in runs:
            if r["flow_id"] not in names:
                names[r["flow_id"]] = self.get(f"/flows/{r['flow_id']}")["name"]
            r["flow_name"] = names[r["flow_id"]]
        return sorted(runs, key=lambda r: r["created"])

    def wait(self, run_id: str, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.flow_run(run_id)
            if run["state"] and run["state"]["type"] in FINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {self.diagnose(run_id)}")

    def diagnose(self, run_id: str) -> str:
        logs = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id] + [c["id"] for c in self.children(run_id)]}},
                                          "sort": "TIMESTAMP_ASC", "limit": 200})
        text = "\n".join(f"{entry['level']} {entry['message'][:500]}" for entry in logs[-80:])
        return f"\n--- flow run logs ---\n{text}\n--- gpu worker ---\n{self.log('worker-gpu')}\n--- cpu worker ---\n{self.log('worker-cpu')}"


def _flow_run_pid(run: dict) -> int | None:
    pid = run.get("infrastructure_pid")
    if not pid:
        return None
    try:
        return int(str(pid).rsplit(":", 1)[-1])
    except ValueError:
        return None


@pytest.fixture(scope="module")
def service(s3_server, tmp_path_factory):
    """Server + pools + limit + one worker per pool + the deployments of deployments/prefect.yaml."""
    svc = Service(tmp_path_factory.mktemp("prefect-home"))
    t0 = time.time()
    try:
        svc.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(svc.port), "--no-ui",
                  "--no-scheduler", "--analytics-off")
        svc.wait_healthy()
        t_server = time.time()
        svc.env["PREFECT"] = PREFECT
        svc.run("bash", str(ROOT / "deployments" / "setup.sh"), timeout=300)
        svc.start("worker-cpu", "worker", "start", "--pool", "cpu", "--name", "cpu-1")
        svc.start("worker-gpu", "worker", "start", "--pool", "gpu", "--name", "gpu-1", "--limit", "1")
        svc.run(PREFECT, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE.relative_to(ROOT)), "--all",
                timeout=600)
        # typed plugin options (docs/deployment.md): the runs below pass the typed, enforced schemas
        svc.run(str(Path(sys.executable).with_name("selftrain")), "deploy-schema", timeout=300)
        svc.wait_workers(["cpu", "gpu"])
        print(f"\nservice up: server {t_server - t0:.0f} s, pools + deploy + workers {time.time() - t_server:.0f} s")
        yield svc
    finally:
        svc.stop_all()


def _config(bucket: str, *overrides: str):
    from selftrain.config import load_config

    return load_config(TINY, [f"output_dir=s3://{bucket}/run", "execution.heavy_stages=deployments",
                              "execution.poll_interval_s=1", *overrides])


def _label(run: dict) -> str:
    p = run["parameters"]
    return {"finetune": f"finetune:{p.get('name')}", "pseudo-label": f"pseudo-label:{p.get('round_')}"}.get(
        run["flow_name"], run["flow_name"])


def _s3():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


@pytest.mark.slow
def test_ui_triggered_run_sends_heavy_stages_to_the_gpu_pool(service, s3_bucket):
    svc = service
    # the deployments, schedule and limit as declared
    retrain = svc.deployment("pipeline/retrain")
    assert retrain["work_pool_name"] == "cpu"
    (sched,) = retrain["schedules"]
    assert not sched["active"] and sched["schedule"]["cron"] == "0 2 * * *" and sched["schedule"]["timezone"] == "UTC"
    (nightly,) = svc.deployment("retrain/nightly")["schedules"]
    assert nightly["active"] and nightly["schedule"]["cron"] == "0 3 * * *", "the scheduled job: retrain with a champion"
    for name in ("pretrain/gpu", "finetune/gpu", "pseudo-label/gpu", "adapt-check/gpu"):
        assert svc.deployment(name)["work_pool_name"] == "gpu"
    assert svc.get("/work_pools/gpu")["concurrency_limit"] == 1

    cfg = _config(s3_bucket, "evaluate.baseline=false")  # one gpu run fewer; the crash test has a baseline
    t0 = time.time()
    run_id = svc.trigger("pipeline/retrain", {"config": cfg.dump()})
    run = svc.wait(run_id)
    took = time.time() - t0
    assert run["state"]["type"] == "COMPLETED", svc.diagnose(run_id)
    assert run["work_pool_name"] == "cpu"

    kids = svc.children(run_id)
    assert sorted(_label(k) for k in kids) == sorted(
        ["pretrain", "finetune:teacher", "pseudo-label:1", "finetune:student-1-distilled", "finetune:student-1"]), kids
    for k in kids:
        assert k["work_pool_name"] == "gpu" and k["state"]["type"] == "COMPLETED", k
    spans = sorted((k["start_time"], k["end_time"]) for k in kids)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"two stage runs overlapped on the GPU: {spans}"

    fs = _s3()
    root = f"{s3_bucket}/run"
    metrics = json.loads(fs.cat(f"{root}/metrics.json"))
    assert metrics["final"] in metrics["models"]
    for path in ["pseudo_labels.parquet", "report.md", f"models/{metrics['final']}/model.safetensors",
                 "models/pretrain/config.json", "models/teacher/model.safetensors"]:
        assert fs.exists(f"{root}/{path}"), path
    for k in kids:  # each stage's result, read by the pipeline from shared storage
        assert fs.exists(f"{root}/.stage-results/{k['id']}.json")

    arts = svc.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert {"tiny-validation", "tiny-metrics"} <= {a["key"] for a in arts}
    metrics_md = next(a for a in arts if a["key"] == "tiny-metrics")["data"]
    assert "macro-F1" in metrics_md
    print(f"\npipeline with {len(kids)} gpu stage runs: {took:.0f} s")


@pytest.mark.slow
def test_killed_stage_run_is_resubmitted_and_finished_stages_are_kept(service, s3_bucket):
    svc = service
    cfg = _config(s3_bucket, "pseudo_label.enabled=false")
    t0 = time.time()
    run_id = svc.trigger("pipeline/retrain", {"config": cfg.dump()})

    killed = None
    deadline = time.time() + 900
    while killed is None and time.time() < deadline:
        run = svc.flow_run(run_id)
        assert run["state"]["type"] not in FINAL, f"pipeline ended before the teacher ran: {svc.diagnose(run_id)}"
        for k in svc.children(run_id):
            if _label(k) != "finetune:teacher":
                continue
            assert k["state"]["type"] not in FINAL, f"the teacher run ended {k['state']['type']} before it could be killed"
            if k["state"]["type"] == "RUNNING" and _flow_run_pid(k):
                pid = _flow_run_pid(k)
                # make sure that PID is this flow run's process before killing it
                assert f"PREFECT__FLOW_RUN_ID={k['id']}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
                killed = k
                break
        time.sleep(0.2)
    assert killed is not None, "never saw the teacher stage running"

    run = svc.wait(run_id)
    took = time.time() - t0
    assert run["state"]["type"] == "COMPLETED", svc.diagnose(run_id)
    kids = svc.children(run_id)
    by = {}
    for k in kids:
        by.setdefault(_label(k), []).append(k)
    teacher = by["finetune:teacher"]
    assert [t["state"]["type"] for t in teacher] == ["CRASHED", "COMPLETED"], teacher
    assert teacher[0]["id"] == killed["id"] and teacher[1]["name"].endswith("-resubmit1")
    # stages finished before the kill ran once: not redone
    assert len(by["pretrain"]) == 1 and len(by["finetune:baseline"]) == 1, by.keys()
    assert all(k["work_pool_name"] == "gpu" for k in kids)
    assert svc.procs["worker-gpu"].poll() is None, "the gpu worker must survive its stage process being killed"

    fs = _s3()
    metrics = json.loads(fs.cat(f"{s3_bucket}/run/metrics.json"))
    assert {"baseline", "teacher"} <= set(metrics["models"])
    print(f"\npipeline with a killed teacher stage (re-submitted): {took:.0f} s")
