"""infra/: the CloudFormation template, the compose stack and the images, checked without AWS or docker.

- cfn-lint and checkov, from their own venv (.venv-infra, `make install`): no errors, no warnings, no
  failed checks, and every checkov skip carries its reason and is still needed.
- What the linters cannot know: the template, the compose stack and the Dockerfiles agree with the
  Dagster instance configs (infra/dagster.ecs.yaml, infra/dagster.compose.yaml) and with the variables
  the code reads, and the compose instance config loads as a real Dagster instance on PostgreSQL.

Without .venv-infra the linter tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).parents[1]
INFRA = ROOT / "infra"
INFRA_BIN = ROOT / ".venv-infra" / "bin"
TEMPLATE = INFRA / "cloudformation.yaml"
DOCKERFILES = [INFRA / "Dockerfile", INFRA / "Dockerfile.cuda"]
APP_SERVICES = ("code-server", "daemon", "webserver")


# --------------------------------------------------------------------------------------------------
# Helpers


def tool(name: str) -> Path:
    path = INFRA_BIN / name
    if not path.exists():
        message = f"{path} is missing: `make install` creates .venv-infra with cfn-lint and checkov"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (!Ref X -> {"Ref": X}, !Sub s -> {"Fn::Sub": s})."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def resources_of(template: dict, type_: str) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == type_}


def env_refs(node) -> set[str]:
    """Every variable a Dagster YAML config reads with `{env: NAME}`."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node)) if node else set()
    return set()


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def ecs_config() -> dict:
    return load_yaml(INFRA / "dagster.ecs.yaml")


def compose() -> dict:
    return load_yaml(INFRA / "compose.yaml")


def container(task_definition: dict) -> dict:
    [c] = task_definition["Properties"]["ContainerDefinitions"]
    return c


def variables(c: dict) -> dict[str, object]:
    """Name -> value of a container's Environment and Secrets (a secret's value is its ValueFrom)."""
    out = {e["Name"]: e["Value"] for e in c.get("Environment", [])}
    out.update({s["Name"]: s["ValueFrom"] for s in c.get("Secrets", [])})
    return out


def code_variables() -> set[str]:
    """The RAG_* variables the package reads (RAG_ICEBERG_* is a prefix: any pyiceberg property)."""
    names: set[str] = set()
    for path in (ROOT / "rag_assets").rglob("*.py"):
        names |= set(re.findall(r"\"(RAG_[A-Z0-9_]+)\"", path.read_text()))
    return names


def assert_known_rag_variables(names: set[str], where: str) -> None:
    known = code_variables() | env_refs(ecs_config())
    unknown = {n for n in names if n.startswith("RAG_") and n not in known and not n.startswith("RAG_ICEBERG_")}
    assert not unknown, f"{where} sets RAG_* variables nothing reads (typo?): {sorted(unknown)}"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            instruction, _, args = pending.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
            pending = ""
    return out


def copies(path: Path) -> list[tuple[list[str], str, bool]]:
    """(sources, destination, from another stage) of every COPY."""
    out = []
    for instruction, args in dockerfile_instructions(path):
        if instruction == "COPY":
            words = shlex.split(args)
            staged = any(w.startswith("--from=") for w in words)
            paths = [w for w in words if not w.startswith("--")]
            out.append((paths[:-1], paths[-1], staged))
    return out


def final_stage_copies(path: Path) -> dict[str, str]:
    """Destination -> source of the files the final image gets from the build context."""
    return {dst: srcs[0] for srcs, dst, staged in copies(path) if not staged and len(srcs) == 1}


# --------------------------------------------------------------------------------------------------
# Linters


def test_cfn_lint_reports_nothing():
    result = subprocess.run([str(tool("cfn-lint")), str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"cfn-lint:\n{result.stdout}{result.stderr}"
    assert not result.stdout.strip(), result.stdout


def run_checkov(directory: Path, *extra: str) -> dict[str, dict]:
    cmd = [str(tool("checkov")), "-d", str(directory), "--compact", "--skip-download", "-o", "json", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=directory)
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-4000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports if "results" in r}


@pytest.fixture(scope="module")
def checkov() -> dict[str, dict]:
    """One checkov run over infra/ (all its frameworks), as {framework: report}."""
    return run_checkov(INFRA)


def test_checkov_has_no_failed_checks(checkov, template):
    assert {"cloudformation", "dockerfile"} <= set(checkov), f"checkov scanned only {sorted(checkov)}"
    assert checkov["dockerfile"]["summary"]["resource_count"] == len(DOCKERFILES)
    assert checkov["cloudformation"]["summary"]["resource_count"] == len(template["Resources"])
    failed = [
        f"{kind}: {c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})"
        for kind, report in checkov.items()
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    for kind, report in checkov.items():
        assert not report["summary"]["parsing_errors"], f"checkov could not parse {kind} files"


def declared_skips(template: dict) -> dict[str, str]:
    """"CHECK@WHERE" -> reason of every skip written in infra/: template Metadata (WHERE: the resource),
    Dockerfile comments (WHERE: the file), infra/.checkov.yaml `skip-check: [CHECK:reason]` (WHERE: *)."""
    skips: dict[str, str] = {}
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skips[f"{skip['id']}@{name}"] = (skip.get("comment") or "").strip()
    for path in DOCKERFILES:
        for check_id, reason in re.findall(r"checkov:skip=(CKV\w+)(?::(.*))?", path.read_text()):
            skips[f"{check_id}@{path.name}"] = reason.strip()
    config = INFRA / ".checkov.yaml"
    if config.exists():
        for entry in load_yaml(config).get("skip-check", []):
            check_id, _, reason = str(entry).partition(":")
            skips[f"{check_id}@*"] = reason.strip()
    return skips


def test_every_checkov_skip_states_its_reason_and_is_still_needed(checkov, template, tmp_path):
    declared = declared_skips(template)
    for where, reason in declared.items():
        assert len(reason) >= 40, f"checkov skip {where} needs a reason (got {reason!r})"
    skipped = [c for report in checkov.values() for c in report["results"]["skipped_checks"]]
    for c in skipped:
        comment = (c.get("check_result", {}).get("suppress_comment") or "").strip()
        assert len(comment) >= 40, f"{c['check_id']} on {c['resource']} is skipped without a reason"
    # Each skip written in the template is one checkov understood (right syntax, right resource).
    reported = {f"{c['check_id']}@{c['resource'].rsplit('.', 1)[-1]}" for c in checkov["cloudformation"]["results"]["skipped_checks"]}
    template_skips = {w for w in declared if w.split("@")[-1] in template["Resources"]}
    assert template_skips <= reported, f"skips checkov ignores: {sorted(template_skips - reported)}"
    # checkov reports a skip whether or not the check would fail, so each skip is proven still needed
    # by scanning a copy of infra/ with the skips disabled: every skipped check must fail there.
    if not declared:
        return
    copy = tmp_path / "infra"
    copy.mkdir()
    for path in [TEMPLATE, *DOCKERFILES]:
        text = path.read_text()
        text = re.sub(r"^(\s+)checkov:$", r"\1checkov-skips-disabled:", text, flags=re.M).replace("checkov:skip=", "checkov-disabled=")
        (copy / path.name).write_text(text)
    ids = sorted({w.split("@")[0] for w in declared})
    unskipped = run_checkov(copy, "-c", ",".join(ids), "--framework", "cloudformation", "dockerfile")
    failing = {
        f"{c['check_id']}@{c['resource'].rsplit('.', 1)[-1] if kind == 'cloudformation' else Path(c['file_path']).name}"
        for kind, report in unskipped.items()
        for c in report["results"]["failed_checks"]
    }
    stale = {w for w in declared if w not in failing and not (w.endswith("@*") and w[:-2] in {f.split("@")[0] for f in failing})}
    assert not stale, f"checkov skips of checks that pass without them (drop them): {sorted(stale)}"


# --------------------------------------------------------------------------------------------------
# CloudFormation vs infra/dagster.ecs.yaml


def test_template_uses_no_yaml_aliases():
    """CloudFormation rejects YAML anchors and aliases, though cfn-lint and PyYAML accept them."""
    events = yaml.parse(TEMPLATE.read_text(), Loader=CfnLoader)
    assert not [e for e in events if isinstance(e, yaml.AliasEvent)]


def launchers() -> dict[str, dict]:
    config = ecs_config()["run_launcher"]["config"]
    return {"gpu": config["gpu_launcher"]["config"], "cpu": config["default_launcher"]["config"]}


def run_task_definitions(template: dict) -> dict[str, tuple[str, dict]]:
    """kind -> (resource name, resource) of the task definition each ECS launcher of dagster.ecs.yaml
    starts, found through the variable that the daemon's task definition gives it."""
    daemon = variables(container(template["Resources"]["DaemonTaskDefinition"]))
    out = {}
    for kind, launcher in launchers().items():
        ref = daemon[launcher["task_definition"]["env"]]
        assert set(ref) == {"Ref"}, f"{launcher['task_definition']['env']} must be !Ref of a task definition"
        out[kind] = (ref["Ref"], template["Resources"][ref["Ref"]])
    return out


def test_capacity_providers_are_the_ones_dagster_ecs_yaml_names(template):
    providers = resources_of(template, "AWS::ECS::CapacityProvider")
    names = {r["Properties"]["Name"] for r in providers.values()}
    wanted = {
        s["capacityProvider"] for launcher in launchers().values() for s in launcher["run_task_kwargs"]["capacityProviderStrategy"]
    }
    assert wanted == {"rag-cpu", "rag-gpu"} and names == wanted
    [association] = resources_of(template, "AWS::ECS::ClusterCapacityProviderAssociations").values()
    assert {p["Ref"] for p in association["Properties"]["CapacityProviders"]} == set(providers)
    assert association["Properties"]["Cluster"] == {"Ref": "Cluster"}
    # The GPU provider's Auto Scaling group launches the GPU AMI on the GPU instance type.
    by_name = {r["Properties"]["Name"]: r for r in providers.values()}
    asg = template["Resources"][by_name["rag-gpu"]["Properties"]["AutoScalingGroupProvider"]["AutoScalingGroupArn"]["Ref"]]
    launch_template = template["Resources"][asg["Properties"]["LaunchTemplate"]["LaunchTemplateId"]["Ref"]]
    data = launch_template["Properties"]["LaunchTemplateData"]
    assert data["ImageId"] == {"Ref": "GpuAmiId"} and data["InstanceType"] == {"Ref": "GpuInstanceType"}
    assert "/gpu/" in template["Parameters"]["GpuAmiId"]["Default"]
    assert "ECS_ENABLE_GPU_SUPPORT=true" in data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert template["Parameters"]["GpuInstanceType"]["Default"] == "g5.xlarge"


def test_daemon_and_webserver_get_every_variable_dagster_ecs_yaml_reads(template):
    needed = env_refs(ecs_config())
    assert {"DAGSTER_PG_PASSWORD", "RAG_ECS_CLUSTER", "RAG_ECS_GPU_TASK_DEFINITION", "RAG_ECS_CPU_TASK_DEFINITION"} <= needed
    for name in ("DaemonTaskDefinition", "WebserverTaskDefinition"):
        c = container(template["Resources"][name])
        missing = needed - set(variables(c))
        assert not missing, f"{name} lacks {sorted(missing)}"
        env = variables(c)
        assert env["RAG_ECS_CLUSTER"] == {"Ref": "Cluster"}
        assert "DAGSTER_PG_PASSWORD" in {s["Name"] for s in c["Secrets"]}, "the password is a secret, not a plain variable"
        # DAGSTER_HOME is the folder the images hold dagster.ecs.yaml in.
        for dockerfile in DOCKERFILES:
            assert final_stage_copies(dockerfile).get(f"{env['DAGSTER_HOME']}/dagster.yaml") == "infra/dagster.ecs.yaml"


def test_run_task_definitions_are_what_the_launchers_start(template):
    tds = run_task_definitions(template)
    assert tds["gpu"][0] != tds["cpu"][0]
    for kind, (name, td) in tds.items():
        props = td["Properties"]
        [c] = props["ContainerDefinitions"]
        assert c["Name"] == launchers()[kind]["container_name"] == "run", name
        assert props["RequiresCompatibilities"] == ["EC2"], name
        # awsvpc needs a networkConfiguration in RunTask, and dagster.ecs.yaml's run_task_kwargs have none.
        if "networkConfiguration" not in launchers()[kind]["run_task_kwargs"]:
            assert props["NetworkMode"] != "awsvpc", name
        gpus = [r for r in c.get("ResourceRequirements", []) if r["Type"] == "GPU"]
        if kind == "gpu":
            assert gpus == [{"Type": "GPU", "Value": "1"}], name
            assert "CudaImageTag" in c["Image"]["Fn::Sub"]
        else:
            assert not gpus and "CpuImageTag" in c["Image"]["Fn::Sub"], name
        # The run worker opens the Dagster instance (Postgres) and the data stores.
        env = variables(c)
        storage_vars = env_refs(ecs_config()["storage"])
        assert storage_vars <= set(env), f"{name} lacks {sorted(storage_vars - set(env))}"
        assert {"RAG_ICEBERG_URI", "RAG_ICEBERG_WAREHOUSE", "RAG_SOURCE", "RAG_QDRANT_URL", "RAG_QDRANT_API_KEY", "PGPASSWORD"} <= set(env)
        assert env["DAGSTER_HOME"] == variables(container(template["Resources"]["DaemonTaskDefinition"]))["DAGSTER_HOME"]


def test_services_run_the_daemon_and_the_webserver(template):
    services = {r["Properties"]["TaskDefinition"]["Ref"]: r for r in resources_of(template, "AWS::ECS::Service").values()}
    assert set(services) == {"DaemonTaskDefinition", "WebserverTaskDefinition"}
    daemon = container(template["Resources"]["DaemonTaskDefinition"])
    webserver = container(template["Resources"]["WebserverTaskDefinition"])
    assert daemon["Command"][:2] == ["dagster-daemon", "run"] and webserver["Command"][0] == "dagster-webserver"
    for c in (daemon, webserver):
        workspace = c["Command"][c["Command"].index("-w") + 1]
        assert final_stage_copies(INFRA / "Dockerfile")[workspace] == "workspace.yaml"
    # One daemon at a time: a deployment stops the old task before it starts the new one.
    deployment = services["DaemonTaskDefinition"]["Properties"]["DeploymentConfiguration"]
    assert services["DaemonTaskDefinition"]["Properties"]["DesiredCount"] == 1 and deployment["MaximumPercent"] == 100
    for service in services.values():
        assert service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_every_task_gets_the_same_settings(template):
    """The services and the run workers must agree on where the data is: only the ECS launcher
    variables (daemon, webserver) and the GPU device (GPU runs) may differ."""
    tds = resources_of(template, "AWS::ECS::TaskDefinition")
    envs = {name: variables(container(td)) for name, td in tds.items()}
    base = envs["RunCpuTaskDefinition"]
    for name, env in envs.items():
        extra = set(env) - set(base)
        assert extra <= {"RAG_ECS_CLUSTER", "RAG_ECS_CPU_TASK_DEFINITION", "RAG_ECS_GPU_TASK_DEFINITION", "RAG_EMBED_DEVICE"}, (name, extra)
        assert not set(base) - set(env), (name, set(base) - set(env))
        assert {k: v for k, v in env.items() if k in base} == base, name
        assert_known_rag_variables(set(env), name)
        # Secrets only through Secrets Manager, never as plain values.
        plain = {e["Name"] for e in container(tds[name]).get("Environment", [])}
        assert not {n for n in plain if re.search("PASSWORD|API_KEY|SECRET|TOKEN", n)}, name


def test_iam_launch_permissions_match_the_run_task_definitions(template):
    tds = run_task_definitions(template)
    statements = {
        s["Sid"]: s
        for policy in template["Resources"]["DaemonTaskRole"]["Properties"]["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
    }
    run_task = statements["RunTheTwoRunTaskDefinitionsOnThisCluster"]
    assert run_task["Action"] == "ecs:RunTask"
    families = {td["Properties"]["Family"]["Fn::Sub"] for _, td in tds.values()}
    assert {r["Fn::Sub"].rsplit("task-definition/", 1)[1] for r in run_task["Resource"]} == {f"{f}:*" for f in families}
    passed = {r["Fn::GetAtt"][0] for r in statements["PassTheRunTaskRoles"]["Resource"]}
    for _, td in tds.values():
        assert {td["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0], td["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]} <= passed
    # What dagster_aws.ecs.EcsRunLauncher calls, and nothing that would let the daemon run anything else.
    actions = set()
    for s in statements.values():
        actions |= set([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    assert {"ecs:RunTask", "ecs:DescribeTasks", "ecs:StopTask", "ecs:DescribeTaskDefinition", "ecs:TagResource", "iam:PassRole", "secretsmanager:ListSecrets"} <= actions
    assert not {a for a in actions if a.endswith("*")}


def test_gpu_capacity_matches_the_gpu_pool(template):
    """One GPU run per GPU: the Dagster `gpu` pool limit equals the GPU group's maximum (g5.xlarge: 1 GPU)."""
    assert template["Parameters"]["GpuMaxInstances"]["Default"] == ecs_config()["concurrency"]["pools"]["default_limit"]


def test_database_is_private_encrypted_and_reachable_only_from_the_tasks(template):
    db = template["Resources"]["Database"]["Properties"]
    assert db["StorageEncrypted"] is True and db["PubliclyAccessible"] is False and db["DeletionProtection"] is True
    assert db["ManageMasterUserPassword"] is True and "MasterUserPassword" not in db
    ingress = resources_of(template, "AWS::EC2::SecurityGroupIngress").values()
    sources = {r["Properties"]["SourceSecurityGroupId"]["Ref"] for r in ingress if r["Properties"]["GroupId"] == {"Ref": "DatabaseSecurityGroup"}}
    assert sources == {"ServiceSecurityGroup", "InstanceSecurityGroup"}
    for r in resources_of(template, "AWS::EC2::SecurityGroup").values():
        assert "SecurityGroupIngress" not in r["Properties"], "no security group takes traffic from an address range"


# --------------------------------------------------------------------------------------------------
# Compose


def volume_target(volume: str) -> str:
    """The container path of a short-syntax volume ("${VAR:-default}:/path:ro" included)."""
    volume = re.sub(r":(ro|rw)$", "", volume)
    return volume.rsplit(":", 1)[1]


def test_compose_services_and_their_environment():
    stack = compose()
    services = stack["services"]
    assert set(services) == {"postgres", "qdrant", *APP_SERVICES}
    needed = env_refs(load_yaml(INFRA / "dagster.compose.yaml")) | {
        "DAGSTER_HOME", "PGPASSWORD", "RAG_HOME", "RAG_SOURCE", "RAG_ICEBERG_URI", "RAG_ICEBERG_WAREHOUSE",
        "RAG_QDRANT_URL", "RAG_QDRANT_API_KEY",
    }
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert not needed - set(env), f"{name} lacks {sorted(needed - set(env))}"
        assert_known_rag_variables(set(env), f"compose service {name}")
        for secret in ("DAGSTER_PG_PASSWORD", "PGPASSWORD", "RAG_QDRANT_API_KEY"):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?.+\}", env[secret]), f"{name}.{secret} must come from the env file"
        # DAGSTER_HOME is the folder the images hold dagster.compose.yaml in.
        for dockerfile in DOCKERFILES:
            assert final_stage_copies(dockerfile).get(f"{env['DAGSTER_HOME']}/dagster.yaml") == "infra/dagster.compose.yaml"
    env = services["daemon"]["environment"]
    # Every address points at a service of the stack, every database exists.
    assert env["DAGSTER_PG_HOST"] in services and urlsplit(env["RAG_ICEBERG_URI"]).hostname in services
    assert urlsplit(env["RAG_QDRANT_URL"]).hostname == "qdrant"
    postgres = services["postgres"]
    assert env["DAGSTER_PG_DB"] == postgres["environment"]["POSTGRES_DB"]
    init = [v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init, "postgres-init.sql is mounted"
    init_sql = (INFRA / init[0].split(":")[0]).read_text()
    assert urlsplit(env["RAG_ICEBERG_URI"]).path.strip("/") in re.findall(r"CREATE DATABASE (\w+)", init_sql)
    assert postgres["environment"]["POSTGRES_PASSWORD"] == env["DAGSTER_PG_PASSWORD"]
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"] == env["RAG_QDRANT_API_KEY"]
    # Runs execute in the code server and the daemon: both see the warehouse and the source.
    for name in ("code-server", "daemon"):
        targets = {volume_target(v) for v in services[name]["volumes"]}
        assert {urlsplit(env["RAG_ICEBERG_WAREHOUSE"]).path, env["RAG_SOURCE"]} <= targets, name
    # The UI only on loopback; no other service published.
    assert all(p.startswith("127.0.0.1:") for p in services["webserver"]["ports"])
    assert [n for n, s in services.items() if s.get("ports")] == ["webserver"]
    # Images pinned.
    for name in ("postgres", "qdrant"):
        assert re.search(r":v?\d+\.\d+", services[name]["image"]), name


def test_compose_workspace_points_at_the_code_server():
    services = compose()["services"]
    [entry] = load_yaml(INFRA / "workspace.compose.yaml")["load_from"]
    server = entry["grpc_server"]
    command = services["code-server"]["command"]
    assert server["host"] == "code-server"
    assert server["port"] == int(command[command.index("-p") + 1])
    assert command[command.index("-m") + 1] == "rag_assets.definitions"
    for name in ("daemon", "webserver"):
        command = services[name]["command"]
        workspace = command[command.index("-w") + 1]
        assert final_stage_copies(INFRA / "Dockerfile")[workspace] == "infra/workspace.compose.yaml"
    build = services["code-server"]["build"]
    assert (INFRA / build["context"] / build["dockerfile"]).resolve() == (INFRA / "Dockerfile").resolve()


def test_compose_gpu_override_gives_the_daemon_the_gpus_and_the_cuda_image():
    daemon = load_yaml(INFRA / "compose.gpu.yaml")["services"]["daemon"]
    assert (INFRA / daemon["build"]["context"] / daemon["build"]["dockerfile"]).resolve() == (INFRA / "Dockerfile.cuda").resolve()
    [device] = daemon["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # The daemon is where LocalGpuRunLauncher starts GPU runs.
    gpu = load_yaml(INFRA / "dagster.compose.yaml")["run_launcher"]["config"]["gpu_launcher"]
    assert gpu["class"] == "LocalGpuRunLauncher"


def test_compose_env_example_names_every_required_secret():
    text = (INFRA / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = dict(
        line.split("=", 1) for line in (INFRA / "compose.env.example").read_text().splitlines() if line and not line.startswith("#")
    )
    assert required == {"POSTGRES_PASSWORD", "QDRANT_API_KEY"} and required <= set(example)
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "infra/compose.env" in ignored
    assert any(fnmatch("infra/compose.env", p) for p in dockerignore())


# --------------------------------------------------------------------------------------------------
# Dagster configs


def test_instance_and_workspace_configs_validate(tmp_path):
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.workspace.config_schema import process_workspace_config
    from dagster._serdes import ConfigurableClassData

    from rag_assets.launcher import GpuRoutingRunLauncher, LocalGpuRunLauncher

    for name in ("dagster.compose.yaml", "dagster.ecs.yaml"):
        config, custom = dagster_instance_config(str(INFRA), name)
        assert custom is None and "postgres" in config["storage"], name
    config, _ = dagster_instance_config(str(INFRA), "dagster.compose.yaml")
    launcher_config = config["run_launcher"]
    launcher = ConfigurableClassData(
        launcher_config["module"], launcher_config["class"], yaml.safe_dump(launcher_config["config"])
    ).rehydrate(as_type=GpuRoutingRunLauncher)
    assert isinstance(launcher, GpuRoutingRunLauncher) and isinstance(launcher.gpu, LocalGpuRunLauncher)
    result = process_workspace_config(load_yaml(INFRA / "workspace.compose.yaml"))
    assert result.success, result.errors


def test_compose_instance_config_opens_a_real_instance_on_postgres(tmp_path, postgres_db):
    import dagster as dg

    from rag_assets.launcher import GpuRoutingRunLauncher

    (tmp_path / "dagster.yaml").write_text((INFRA / "dagster.compose.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert isinstance(instance.run_launcher, GpuRoutingRunLauncher)
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    finally:
        instance.dispose()


# --------------------------------------------------------------------------------------------------
# Images


def dockerignore() -> list[str]:
    return [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context():
    patterns = dockerignore()
    for path in DOCKERFILES:
        for sources, _, staged in copies(path):
            if staged:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
                parts = Path(source).parts
                prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
                excluded = [p for p in patterns for prefix in prefixes if fnmatch(prefix, p)]
                assert not excluded, f"{path.name}: COPY {source} is excluded by .dockerignore {excluded}"
    for must in (".git", ".venv", ".venv-infra", ".rag", "infra/compose.env"):
        assert must in patterns


def test_dockerfiles_pin_their_base_run_as_non_root_and_install_the_project():
    torch_pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    final_copies = []
    for path in DOCKERFILES:
        steps = dockerfile_instructions(path)
        for instruction, args in steps:
            if instruction == "FROM":
                image = args.split()[0]
                assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), f"{path.name}: base {image} is not pinned"
        runs = " ".join(args for instruction, args in steps if instruction == "RUN")
        assert f"torch=={torch_pin}" in runs, path.name
        cpu_index = "download.pytorch.org/whl/cpu" in runs
        assert cpu_index == (path.name == "Dockerfile"), f"{path.name}: CPU torch index only in the CPU image"
        assert "pip install /src" in runs
        users = [args for instruction, args in steps if instruction == "USER"]
        assert users and users[-1] not in ("root", "0"), path.name
        assert [i for i, _ in steps].index("USER") < [i for i, _ in steps].index("CMD")
        assert any(i == "HEALTHCHECK" for i, _ in steps), path.name
        final_copies.append(final_stage_copies(path))
    assert final_copies[0] == final_copies[1], "both images hold the same configs, so either serves any role"
