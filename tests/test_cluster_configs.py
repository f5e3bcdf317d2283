"""cluster/*.yaml: Ray's own validator accepts every launcher config, and the cloud ones offer
spot / preemptible GPU workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml"])
def test_ray_validates_the_launcher_config(name):
    from ray.autoscaler._private.util import validate_config

    validate_config(yaml.safe_load((CLUSTER / name).read_text()))


def test_aws_offers_a_spot_gpu_worker():
    nodes = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())["available_node_types"]
    spot = [n for n in nodes.values() if n["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot and all(n["node_config"]["InstanceType"].startswith("g") for n in spot)


def test_gcp_offers_a_spot_gpu_worker():
    nodes = yaml.safe_load((CLUSTER / "gcp-gpu.yaml").read_text())["available_node_types"]
    spot = [n for n in nodes.values() if n["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"]
    assert spot and all(n["resources"].get("GPU") for n in spot)
    assert all(n["node_config"]["scheduling"]["automaticRestart"] is False for n in spot)
