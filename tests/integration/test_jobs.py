"""The files in jobs/: they parse, and the command each one runs is a valid incremental batchclf run.

Each command line is checked with batchclf's own argument parser, so an option renamed in the CLI
breaks this test rather than a nightly job.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from batchclf.cli import build_parser

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def parse_run(argv: list[str]):
    """The parsed ``batchclf run`` arguments of a command line that starts with the batchclf program."""
    assert PurePosixPath(argv[0]).name == "batchclf", argv
    assert argv[1] == "run", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"batchclf rejects the command line {shlex.join(argv)}")


def check_incremental_run(argv: list[str], output: str):
    args = parse_run(argv)
    assert args.incremental is True
    assert str(args.output) == output
    assert args.output.suffix == ".parquet"
    assert args.progress is False, "jobs log to files: no progress bar"
    return args


def test_every_job_file_is_covered():
    files = {p.relative_to(JOBS).as_posix() for p in JOBS.rglob("*") if p.is_file()}
    assert files >= {
        "slurm/batchclf.sbatch",
        "slurm/jobqueue.yaml",
        "slurm/local-cluster.sh",
        "kubernetes/daskcluster.yaml",
        "kubernetes/cronjob.yaml",
        "cron/crontab",
        "systemd/batchclf.service",
        "systemd/batchclf.timer",
        "README.md",
    }


# Kubernetes.


def load_yaml(name: str) -> dict:
    return yaml.safe_load((JOBS / name).read_text())


def test_daskcluster_manifest():
    cluster = load_yaml("kubernetes/daskcluster.yaml")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["kind"] == "DaskCluster"
    name = cluster["metadata"]["name"]
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] >= 1
    (container,) = worker["spec"]["containers"]
    # The image's entrypoint is batchclf: the Dask processes replace it ("command"), never follow it ("args").
    assert "args" not in container
    assert container["command"][:2] == ["dask", "worker"]
    assert container["command"][container["command"].index("--nthreads") + 1] == "1"
    scheduler = cluster["spec"]["scheduler"]
    assert "args" not in scheduler["spec"]["containers"][0]
    assert scheduler["spec"]["containers"][0]["command"][:2] == ["dask", "scheduler"]
    service = scheduler["service"]
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    ports = {port["name"]: port["port"] for port in service["ports"]}
    assert ports["tcp-comm"] == 8786
    container_ports = {p["name"] for p in scheduler["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= container_ports


def test_cronjob_runs_incrementally_against_the_dask_cluster():
    cluster = load_yaml("kubernetes/daskcluster.yaml")
    cronjob = load_yaml("kubernetes/cronjob.yaml")
    assert cronjob["apiVersion"] == "batch/v1" and cronjob["kind"] == "CronJob"
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    args = check_incremental_run(container["command"], "/data/predictions.parquet")
    # The scheduler address is the service the operator makes for the DaskCluster, over TLS.
    assert args.scheduler == f"tls://{cluster['metadata']['name']}-scheduler:8786"
    # Workers must see the images at the path the driver gives them: same claim, same mount path.
    driver_mounts = _mounts(pod, container)
    worker_pod = cluster["spec"]["worker"]["spec"]
    worker_mounts = _mounts(worker_pod, worker_pod["containers"][0])
    input_mount = _mount_of(str(args.input), driver_mounts)
    assert worker_mounts.get(input_mount[0]) == input_mount[1]
    assert _mount_of(str(args.output), driver_mounts)
    # Retrying a usage error or a held lock is pointless.
    rules = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert {2, 4} <= {code for rule in rules if rule["action"] == "FailJob" for code in rule["onExitCodes"]["values"]}


def _mounts(pod: dict, container: dict) -> dict[str, str]:
    volumes = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes}
    return {m["mountPath"]: claims[m["name"]] for m in container["volumeMounts"] if m["name"] in claims}


def _secret_mounts(pod: dict, container: dict) -> dict[str, str]:
    """Mount path → Secret name."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]] for m in container.get("volumeMounts", []) if m["name"] in secrets}


def _option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def test_kubernetes_dask_processes_speak_tls_with_one_secret():
    """Scheduler, workers and the driver use the same certificate files, from the same Secret."""
    cluster = load_yaml("kubernetes/daskcluster.yaml")
    scheduler_pod = cluster["spec"]["scheduler"]["spec"]
    worker_pod = cluster["spec"]["worker"]["spec"]
    cronjob = load_yaml("kubernetes/cronjob.yaml")
    driver_pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    files = {}
    for pod in (scheduler_pod, worker_pod):
        (container,) = pod["containers"]
        args = container["command"]
        files[args[1]] = tuple(_option(args, f"--tls-{kind}") for kind in ("ca-file", "cert", "key"))
        mounts = _secret_mounts(pod, container)
        assert all(_mount_of(path, mounts)[1] == "batchclf-dask-tls" for path in files[args[1]]), mounts
    assert _option(scheduler_pod["containers"][0]["command"], "--protocol") == "tls"
    assert files["scheduler"] == files["worker"]
    (driver,) = driver_pod["containers"]
    env = {item["name"]: item["value"] for item in driver["env"]}
    prefix = "DASK_DISTRIBUTED__COMM__"
    assert env[f"{prefix}REQUIRE_ENCRYPTION"] == "True"
    client_files = tuple(env[f"{prefix}TLS__{key}"] for key in ("CA_FILE", "CLIENT__CERT", "CLIENT__KEY"))
    assert client_files == files["scheduler"]
    mounts = _secret_mounts(driver_pod, driver)
    assert all(_mount_of(path, mounts)[1] == "batchclf-dask-tls" for path in client_files)


def _mount_of(path: str, mounts: dict[str, str]) -> tuple[str, str]:
    found = [(m, claim) for m, claim in mounts.items() if path.startswith(m.rstrip("/") + "/")]
    assert found, f"{path} is on no mounted volume"
    return found[0]


# cron and systemd.


def test_crontab_line():
    lines = [
        line
        for line in (JOBS / "cron" / "crontab").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    minute, hour, day, month, weekday, user, command = fields
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24 and (day, month, weekday) == ("*", "*", "*")
    assert re.fullmatch(r"[a-z_][a-z0-9_-]*", user)
    assert "%" not in command, "cron turns % into a newline"
    argv = shlex.split(command)
    redirect = argv.index(">>")
    assert argv[redirect + 1].endswith(".log") and argv[redirect + 2] == "2>&1"
    args = check_incremental_run(argv[:redirect], "/var/lib/batchclf/predictions.parquet")
    assert args.summary is not None and str(args.changes) == "/var/lib/batchclf/changes.jsonl"


def read_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((JOBS / "systemd" / name).read_text())
    return unit


def test_systemd_service():
    service = read_unit("batchclf.service")
    assert service["Service"]["Type"] == "oneshot"
    args = check_incremental_run(shlex.split(service["Service"]["ExecStart"]), "/var/lib/batchclf/predictions.parquet")
    assert args.summary is not None and str(args.changes) == "/var/lib/batchclf/changes.jsonl"
    assert PurePosixPath(service["Service"]["ExecStart"].split()[0]).is_absolute(), "systemd needs an absolute path"
    assert "4" in service["Service"]["SuccessExitStatus"].split()  # lock held by a run started by hand
    assert str(args.output.parent) in service["Service"]["ReadWritePaths"].split()
    assert service["Service"]["KillSignal"] == "SIGINT"  # batchclf stops cleanly and resumes next time
    assert service["Service"]["KillMode"] == "mixed"  # to batchclf only: it stops its workers itself


def test_systemd_timer():
    timer = read_unit("batchclf.timer")
    assert timer["Timer"]["Unit"] == "batchclf.service"
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d", timer["Timer"]["OnCalendar"])
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


# SLURM.


def test_sbatch_script():
    script = (JOBS / "slurm" / "batchclf.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(JOBS / "slurm" / "batchclf.sbatch")]).returncode == 0
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", script, re.M))
    assert int(directives["ntasks"]) >= 1 and directives["time"]
    first_code_line = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_code_line for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))
    assert re.search(
        r"^srun .*--overlap\s*\\\n\s*\"\$python\" -m distributed.cli.dask_scheduler "
        r"--scheduler-file \"\$scheduler_file\" --protocol tls \"\$\{tls\[@\]\}\"",
        script,
        re.M,
    )
    assert re.search(
        r"^srun --ntasks=\"\$workers\".*\\\n\s*\"\$python\" -m distributed.cli.dask_worker "
        r"--scheduler-file \"\$scheduler_file\" \"\$\{tls\[@\]\}\"",
        script,
        re.M,
    )
    run = re.search(r"^\"\$python\" -m (batchclf run .*?)\|\| status=\$\?", script, re.M | re.S)
    assert run, "the script must run batchclf and keep its exit code"
    argv = shlex.split(run.group(1).replace("\\\n", " ").replace('"$@"', ""))
    argv = [{"$input": "IN", "$output": "OUT.parquet", "$scheduler_file": "s.json"}.get(a, a) for a in argv]
    args = check_incremental_run(argv, "OUT.parquet")
    assert str(args.scheduler_file) == "s.json"
    assert "trap cleanup EXIT" in script


def test_sbatch_script_makes_one_private_certificate_for_all_its_dask_processes():
    script = (JOBS / "slurm" / "batchclf.sbatch").read_text()
    tls = re.search(r"^tls=\((.*)\)$", script, re.M)
    assert tls, "the --tls-* options of the scheduler and the workers"
    options = dict(zip(*[iter(shlex.split(tls.group(1)))] * 2))
    assert options == {
        "--tls-ca-file": "$tls_dir/tls.crt",
        "--tls-cert": "$tls_dir/tls.crt",
        "--tls-key": "$tls_dir/tls.key",
    }
    exports = dict(re.findall(r"^export (DASK_DISTRIBUTED__COMM__\w+)=\"?([^\"\n]+)\"?$", script, re.M))
    assert exports == {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "$tls_dir/tls.crt",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": "$tls_dir/tls.crt",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": "$tls_dir/tls.key",
    }
    made = script.index("write_certificates(sys.argv[1])")
    trap = script.index("trap cleanup EXIT")
    assert trap < script.rindex('rm -rf "$tls_dir"', 0, made) < made < script.index("dask_scheduler")
    assert 'rm -rf "$tls_dir"' in script[script.index("cleanup() {") : trap]  # removed when the job ends


def test_sbatch_certificate_command_works(tmp_path):
    """The script's own command line, run here: it makes the files the --tls-* options name."""
    script = (JOBS / "slurm" / "batchclf.sbatch").read_text()
    command = re.search(r"^\"\$python\" -c '([^']+)' \\\n\s*\"\$tls_dir\"$", script, re.M)
    assert command
    subprocess.run([sys.executable, "-c", command.group(1), str(tmp_path / "tls")], check=True)
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["tls.crt", "tls.key"]


def test_jobqueue_config_builds_a_slurm_job(tmp_path):
    pytest.importorskip("dask_jobqueue", reason="pip install 'batchclf[slurm]' to test the --cluster slurm path")
    from batchclf.cluster import slurm_cluster

    settings = load_yaml("slurm/jobqueue.yaml")
    settings["batchclf"]["jobs"] = 0  # check the refusal without submitting anything
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(settings))
    from batchclf.errors import UsageError

    with pytest.raises(UsageError, match="jobs must be a positive number"):
        slurm_cluster(tmp_path / "zero.yaml")
    (tmp_path / "bad.yaml").write_text("jobqueue: {slurm: {cores: 2}}\n")
    with pytest.raises(UsageError, match="cores and memory"):
        slurm_cluster(tmp_path / "bad.yaml")
