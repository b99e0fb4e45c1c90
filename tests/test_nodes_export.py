"""Export nodes (USD, animated GLB) run against the ComfyUI stand-in: files under the output folder, FILE_3D out,
names leaving the output folder refused before anything is written."""
import pytest

from moge4d_core.errors import MoGe4DInputError
from test_nodes_run import _by_id, nodes, scene  # noqa: F401  (the node-run fixtures: stand-in nodes, demo scene)

pxr = pytest.importorskip("pxr")
pygltflib = pytest.importorskip("pygltflib")


def test_export_nodes_are_registered_with_file_3d_output(nodes):
    glb = _by_id(nodes, "MoGe4DSaveAnimatedGLB").define_schema()
    assert [o.io_type for o in glb.outputs] == ["FILE_3D"]
    assert [i.id for i in glb.inputs] == ["trajectories", "filename_prefix", "max_points"]
    usd = _by_id(nodes, "MoGe4DSaveUSD").define_schema()
    assert [i.id for i in usd.inputs] == ["trajectories", "filename_prefix", "format", "max_points", "camera_path"]
    assert usd.is_output_node and glb.is_output_node


def test_glb_node_writes_under_output_and_hands_on_file_3d(nodes, scene, tmp_path):
    out = _by_id(nodes, "MoGe4DSaveAnimatedGLB").execute(trajectories=scene, filename_prefix="moge4d/anim",
                                                         max_points=100)
    (file3d,) = out.args
    path = tmp_path / "output" / "moge4d" / "anim_00001.glb"
    assert str(file3d.source) == str(path) and file3d.format == "glb"
    gltf = pygltflib.GLTF2().load(str(path))
    assert len(gltf.animations) == 1 and len(gltf.animations[0].channels) == 5
    assert max(gltf.accessors[m.primitives[0].attributes.POSITION].count for m in gltf.meshes) <= 100


def test_usd_node_writes_scene_and_camera(nodes, scene, tmp_path):
    from pxr import Usd, UsdGeom

    cam, _ = _by_id(nodes, "MoGe4DCameraPath").execute(preset="orbit_left", trajectories=scene).args
    node = _by_id(nodes, "MoGe4DSaveUSD")
    (rel,) = node.execute(trajectories=scene, filename_prefix="moge4d/vfx", format="usdz", camera_path=cam).args
    assert rel == "moge4d/vfx_00001.usdz"
    stage = Usd.Stage.Open(str(tmp_path / "output" / rel))
    cams = [p for p in stage.Traverse() if p.IsA(UsdGeom.Camera)]
    assert [str(p.GetPath()) for p in cams] == ["/World/Cameras/orbit_left"]
    pts = UsdGeom.Points(stage.GetPrimAtPath("/World/Scene"))
    assert len(pts.GetPointsAttr().Get(4)) == scene.num_points
    (rel2,) = node.execute(trajectories=scene, filename_prefix="moge4d/vfx", format="usda").args
    assert rel2 == "moge4d/vfx_00002.usda" and (tmp_path / "output" / rel2).is_file()


@pytest.mark.parametrize("node_id", ["MoGe4DSaveAnimatedGLB", "MoGe4DSaveUSD"])
def test_names_leaving_the_output_folder_are_refused(nodes, scene, tmp_path, node_id):
    node = _by_id(nodes, node_id)
    assert node.validate_inputs(filename_prefix="moge4d/scene") is True
    for prefix in ("../escape/scene", str(tmp_path / "elsewhere" / "scene"), "a/../../b/scene"):
        assert "outside ComfyUI's output folder" in node.validate_inputs(filename_prefix=prefix)
        with pytest.raises(MoGe4DInputError, match="outside ComfyUI's output folder"):
            node.execute(trajectories=scene, filename_prefix=prefix)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".glb", ".usd")]


def test_bad_format_names_the_input(nodes, scene, tmp_path):
    with pytest.raises(MoGe4DInputError, match="format: 'abc'"):
        _by_id(nodes, "MoGe4DSaveUSD").execute(trajectories=scene, filename_prefix="x/y", format="abc")
    assert not list((tmp_path / "output").rglob("y_*"))
