"""The embedding projector's files, read back by TensorBoard's own projector plugin, as the browser gets them: the
run's config lists the embedding, and its points, labels and sprite are the ones written, image i at its tile."""

import io

import pytest
import torch
from PIL import Image

from vae_cli.writers import projector

werkzeug_test = pytest.importorskip("werkzeug.test")  # installed with TensorBoard


def _plugin(logdir):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    context = base_plugin.TBContext(
        logdir=str(logdir),
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)),
        multiplexer=multiplexer,
    )
    apps = ProjectorPlugin(context).get_plugin_apps()
    return lambda route, **query: werkzeug_test.Client(apps[route]).get(route, query_string=query)


@pytest.mark.parametrize("channels", [1, 3])
def test_tensorboards_projector_reads_the_points_labels_and_sprite_as_written(tmp_path, channels):
    torch.manual_seed(0)
    n, k = 11, 4
    points = torch.randn(n, k)
    labels = [i % 3 for i in range(n)]
    images = torch.rand(n, channels, 5, 7)
    projector.write(tmp_path, "test/posterior_mean", 33, points, labels, images)
    projector.write(tmp_path, "test/posterior_mean", 66, points + 1, labels, images)  # a resumed run's, beside it
    get = _plugin(tmp_path)

    config = get("/info", run=".").get_json()
    names = [e["tensorName"] for e in config["embeddings"]]
    assert names == ["test/posterior_mean:00033", "test/posterior_mean:00066"]
    assert config["embeddings"][0]["sprite"]["singleImageDim"] == [7, 5]

    raw = get("/tensor", run=".", name="test/posterior_mean:00033", num_rows=n).data
    read = torch.frombuffer(bytearray(raw), dtype=torch.float32).view(n, k)
    torch.testing.assert_close(read, points, rtol=1e-6, atol=0)
    metadata = get("/metadata", run=".", name="test/posterior_mean:00033", num_rows=n).get_data(as_text=True)
    assert metadata.split() == [str(y) for y in labels]

    png = get("/sprite_image", run=".", name="test/posterior_mean:00033").data
    sprite = (
        torch.tensor(
            list(Image.open(io.BytesIO(png)).convert("RGB" if channels == 3 else "L").getdata()), dtype=torch.float32
        ).view(4 * 5, 4 * 7, channels)
        / 255
    )  # 11 images: 4 to a row
    for i in range(n):
        r, c = divmod(i, 4)
        tile = sprite[r * 5 : (r + 1) * 5, c * 7 : (c + 1) * 7].permute(2, 0, 1)
        torch.testing.assert_close(tile, images[i], atol=0.5 / 255 + 1e-6, rtol=0)
    assert sprite[3 * 5 :, 3 * 7 :].abs().max() == 0  # the square's tail is empty
