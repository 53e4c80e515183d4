"""qfleet.kube.configure keeps a connection to the apiserver for each thread that calls at once."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from qfleet import kube


@pytest.fixture
def in_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials as load_incluster_config leaves them (the default Configuration), restored afterwards; the client's
    own default pool size, 5 per CPU, is pinned to 10 (a 2-CPU node)."""
    monkeypatch.setattr(k8s.Configuration, "_default", None)
    monkeypatch.setattr(kube, "LIMIT", kube.LIMIT)

    def load() -> None:
        k8s.Configuration.set_default(k8s.Configuration(host="https://apiserver.test", connection_pool_maxsize=10))

    monkeypatch.setattr(kube.k8s_config, "load_incluster_config", load)


@pytest.mark.parametrize(("connections", "pool"), [(17, 17), (4, 10), (0, 10)],
                         ids=["more threads than the default pool: one each", "fewer: the default stays",
                              "not given: the default"])
def test_the_pool_holds_a_connection_for_each_worker(in_cluster: None, connections: int, pool: int) -> None:
    api = kube.configure(40, 80, connections=connections)
    assert api.configuration.connection_pool_maxsize == pool
    assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == pool
    assert api.configuration.host == "https://apiserver.test" and kube.LIMIT.qps == 40
