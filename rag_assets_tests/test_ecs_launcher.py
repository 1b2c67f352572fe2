"""The ECS routing, against moto's AWS server: what each backend asks ECS for.

The instance is loaded from infra/dagster.ecs.yaml itself (storage on the local PostgreSQL, in a
database made for this test), so the shipped production config is what is tested.
"""

import json
from pathlib import Path

import dagster as dg
from dagster._core.launcher import LaunchRunContext

from rag_assets_tests.test_launcher import create_run

ROOT = Path(__file__).parents[1]


def ecs_cluster() -> dict[str, str]:
    """What the CloudFormation stack creates, in miniature: a cluster with a CPU and a GPU capacity
    provider, one container instance, and the two task definitions."""
    import boto3

    ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
    ecs.create_cluster(clusterName="rag")
    for name in ("rag-cpu", "rag-gpu"):
        ecs.create_capacity_provider(
            name=name,
            autoScalingGroupProvider={
                "autoScalingGroupArn": f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x:autoScalingGroupName/{name}",
                "managedScaling": {"status": "ENABLED"},
            },
        )
    ecs.put_cluster_capacity_providers(cluster="rag", capacityProviders=["rag-cpu", "rag-gpu"], defaultCapacityProviderStrategy=[])
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g5.xlarge")["Instances"][0]["InstanceId"]
    ecs.register_container_instance(cluster="rag", instanceIdentityDocument=json.dumps({"instanceId": instance}))
    arns = {}
    for kind, image, extra in (
        ("cpu", "rag-assets:cpu", {}),
        ("gpu", "rag-assets:cuda", {"resourceRequirements": [{"type": "GPU", "value": "1"}]}),
    ):
        td = ecs.register_task_definition(
            family=f"rag-run-{kind}", requiresCompatibilities=["EC2"],
            containerDefinitions=[{"name": "run", "image": image, "memory": 2048, **extra}],
        )
        arns[kind] = td["taskDefinition"]["taskDefinitionArn"]
    return arns


def test_gpu_runs_ask_ecs_for_a_gpu_on_the_gpu_capacity_provider(rag_env, moto_server, postgres_db, monkeypatch):
    import boto3

    from rag_assets.defs.jobs import remove_run_config

    arns = ecs_cluster()
    monkeypatch.setenv("RAG_ECS_CLUSTER", "rag")
    monkeypatch.setenv("RAG_ECS_GPU_TASK_DEFINITION", arns["gpu"])
    monkeypatch.setenv("RAG_ECS_CPU_TASK_DEFINITION", arns["cpu"])
    (rag_env.dagster_home / "dagster.yaml").write_text((ROOT / "infra" / "dagster.ecs.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(rag_env.dagster_home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    instance.add_dynamic_partitions("shards", ["alpha"])

    gpu_run = create_run(instance, "shard_sync_job", tags={"dagster/partition": "alpha"})
    cpu_run = create_run(instance, "remove_shard_job", run_config=remove_run_config("alpha"))
    for run in (gpu_run, cpu_run):
        instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    ecs = boto3.client("ecs")
    tasks = {}
    for run in (gpu_run, cpu_run):
        tags = instance.get_run_by_id(run.run_id).tags
        [task] = ecs.describe_tasks(cluster="rag", tasks=[tags["ecs/task_arn"]], include=["TAGS"])["tasks"]
        tasks[tags["rag/launcher"]] = task

    gpu, cpu = tasks["gpu"], tasks["default"]
    assert gpu["taskDefinitionArn"] == arns["gpu"] and gpu["capacityProviderName"] == "rag-gpu"
    [override] = gpu["overrides"]["containerOverrides"]
    assert override["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
    assert cpu["taskDefinitionArn"] == arns["cpu"] and cpu["capacityProviderName"] == "rag-cpu"
    [override] = cpu["overrides"]["containerOverrides"]
    assert "resourceRequirements" not in override and override["command"][:3] == ["dagster", "api", "execute_run"]
    # The ECS task carries the run id, so the run can be found from the task and terminated by it.
    assert {"key": "dagster/run_id", "value": gpu_run.run_id} in gpu["tags"]
