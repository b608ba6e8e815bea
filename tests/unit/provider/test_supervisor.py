"""What a started instance records for the stats endpoints (image, sandbox, hostPath
volumes) survives an agent restart; a state file written before those fields existed
is still adopted."""

import json
import shutil

from vnode.provider.spec import LaunchSpec
from vnode.provider.supervisor import Supervisor


async def test_instance_records_image_sandbox_and_volumes(tmp_path):
    sup = Supervisor(tmp_path / "state")
    sandbox = sup.sandbox("uid-1")
    spec = LaunchSpec(namespace="ns", pod_name="p", pod_uid="uid-1", container="server", image="ghcr.io/ggml-org/llama.cpp:server",
                      binary=shutil.which("sleep"), args=["30"], env={}, workdir=str(sandbox), host="127.0.0.1", port=8080,
                      host_volumes={"models": str(tmp_path / "store")})
    inst = await sup.start(spec, model_path=None, instance=0)
    try:
        assert (inst.image, inst.sandbox, inst.volumes) == (spec.image, str(sandbox), {"models": str(tmp_path / "store")})
        (adopted,) = Supervisor(tmp_path / "state").adopt()
        assert adopted == inst
    finally:
        await sup.stop(inst, grace=2)
    # An older agent's state file, without the new fields: still adopted, the fields empty.
    state = sup.container_dir("uid-1", "server") / "state.json"
    old = json.loads(state.read_text())
    for key in ("image", "sandbox", "volumes"):
        old.pop(key)
    state.write_text(json.dumps(old))
    (adopted,) = sup.adopt()
    assert (adopted.image, adopted.sandbox, adopted.volumes) == ("", "", {})
