"""Caffe forks' fields: their prototxts and binary files read, BVLC's files unchanged."""
import glob
import os

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from netspec import dialects, schema
from netspec.errors import ParseError
from netspec.proto import caffe_pb2

FORKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "caffe-forks")
needs_forks = pytest.mark.skipif(not os.path.isdir(FORKS), reason="../shared/caffe-forks is not beside the checkout")


# ---------------------------------------------------------------- protobuf wire format, by hand

def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    """A length-delimited field (wire type 2): a string or a sub-message."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def int_field(number, value):
    return varint(number << 3) + varint(value)


def layer(name, type_, *fields):
    return field(100, field(1, name.encode()) + field(2, type_.encode()) + b"".join(fields))


def blob(*values):
    import struct
    return field(7, field(5, struct.pack(f"<{len(values)}f", *values)))   # BlobProto.data, packed


def write(tmp_path, data, name="net.caffemodel"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("message, name, number, ftype", [
    ("LayerParameter", "annotated_data_param", 200, FD.TYPE_MESSAGE),
    ("LayerParameter", "multibox_loss_param", 201, FD.TYPE_MESSAGE),
    ("LayerParameter", "permute_param", 202, FD.TYPE_MESSAGE),
    ("LayerParameter", "prior_box_param", 203, FD.TYPE_MESSAGE),
    ("LayerParameter", "detection_output_param", 204, FD.TYPE_MESSAGE),
    ("LayerParameter", "detection_evaluate_param", 205, FD.TYPE_MESSAGE),
    ("LayerParameter", "norm_param", 206, FD.TYPE_MESSAGE),
    ("LayerParameter", "video_data_param", 207, FD.TYPE_MESSAGE),
    ("LayerParameter", "bias_channel_param", 149, FD.TYPE_MESSAGE),
    ("LayerParameter", "unique_label_param", 150, FD.TYPE_MESSAGE),
    ("LayerParameter", "mat_read_param", 151, FD.TYPE_MESSAGE),
    ("LayerParameter", "bn_param", 152, FD.TYPE_MESSAGE),
    ("LayerParameter", "roi_pooling_param", 8266711, FD.TYPE_MESSAGE),
    ("LayerParameter", "smooth_l1_loss_param", 8266712, FD.TYPE_MESSAGE),
    ("LayerParameter", "segnet_bn_param", 45, FD.TYPE_MESSAGE),
    ("LayerParameter", "shuffle_channel_param", 164, FD.TYPE_MESSAGE),
    ("TransformationParameter", "resize_param", 8, FD.TYPE_MESSAGE),
    ("TransformationParameter", "noise_param", 9, FD.TYPE_MESSAGE),
    ("TransformationParameter", "emit_constraint", 10, FD.TYPE_MESSAGE),
    ("TransformationParameter", "crop_h", 11, FD.TYPE_UINT32),
    ("TransformationParameter", "crop_w", 12, FD.TYPE_UINT32),
    ("TransformationParameter", "distort_param", 13, FD.TYPE_MESSAGE),
    ("TransformationParameter", "expand_param", 14, FD.TYPE_MESSAGE),
    ("SolverParameter", "plateau_winsize", 43, FD.TYPE_INT32),
    ("SolverParameter", "show_per_class_result", 44, FD.TYPE_BOOL),
    ("SolverState", "minimum_loss", 5, FD.TYPE_FLOAT),
    ("SolverState", "iter_last_event", 6, FD.TYPE_INT32),
    ("DropoutParameter", "scale_train", 2, FD.TYPE_BOOL),
    ("BatchNormParameter", "update_global_stats", 4, FD.TYPE_BOOL),
    ("ImageDataParameter", "ignore_label", 15, FD.TYPE_INT32),
    ("ImageDataParameter", "label_type", 16, FD.TYPE_ENUM),
    # The forks' numbers that BVLC gives to other fields, in the dialect messages.
    ("PSPNetLayerFields", "interp_param", 143, FD.TYPE_MESSAGE),
    ("PSPNetLayerFields", "seg_accuracy_param", 144, FD.TYPE_MESSAGE),
    ("PSPNetLayerFields", "mat_write_param", 145, FD.TYPE_MESSAGE),
    ("PSPNetLayerFields", "dense_crf_param", 146, FD.TYPE_MESSAGE),
    ("PSPNetLayerFields", "domain_transform_param", 147, FD.TYPE_MESSAGE),
    ("PSPNetLayerFields", "adaptive_bias_channel_param", 148, FD.TYPE_MESSAGE),
    ("PSPNetTransformationFields", "scale_factors", 8, FD.TYPE_FLOAT),
    ("PSPNetTransformationFields", "crop_width", 9, FD.TYPE_UINT32),
    ("PSPNetTransformationFields", "crop_height", 10, FD.TYPE_UINT32),
    ("SegNetLayerFields", "bn_param", 45, FD.TYPE_MESSAGE),
    ("SegNetLayerFields", "upsample_param", 137, FD.TYPE_MESSAGE),
    ("SegNetLayerFields", "dense_image_data_param", 138, FD.TYPE_MESSAGE),
    ("SSDSolverFields", "eval_type", 41, FD.TYPE_STRING),
    ("SSDSolverFields", "ap_version", 42, FD.TYPE_STRING),
    # BVLC's own, unchanged by the forks.
    ("LayerParameter", "input_param", 143, FD.TYPE_MESSAGE),
    ("LayerParameter", "embed_param", 137, FD.TYPE_MESSAGE),
    ("LayerParameter", "tile_param", 138, FD.TYPE_MESSAGE),
    ("LayerParameter", "crop_param", 144, FD.TYPE_MESSAGE),
    ("SolverParameter", "layer_wise_reduce", 41, FD.TYPE_BOOL),
    ("SolverParameter", "weights", 42, FD.TYPE_STRING),
])
def test_field_numbers(message, name, number, ftype):
    desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]
    assert (desc.number, desc.type) == (number, ftype)


def test_fork_defaults():
    assert caffe_pb2.NormalizeParameter().eps == pytest.approx(1e-10)
    assert caffe_pb2.PriorBoxParameter().offset == 0.5 and caffe_pb2.PriorBoxParameter().flip
    assert caffe_pb2.DetectionOutputParameter().keep_top_k == -1
    assert caffe_pb2.DetectionOutputParameter().code_type == caffe_pb2.PriorBoxParameter.CORNER
    assert caffe_pb2.NonMaximumSuppressionParameter().nms_threshold == pytest.approx(0.3)
    loss = caffe_pb2.MultiBoxLossParameter()
    assert (loss.match_type, loss.mining_type) == (loss.PER_PREDICTION, loss.MAX_NEGATIVE)
    assert loss.neg_pos_ratio == 3 and loss.loc_loss_type == loss.SMOOTH_L1
    assert caffe_pb2.SolverParameter().eval_type == "classification"
    assert caffe_pb2.SolverParameter().ap_version == "Integral"
    assert caffe_pb2.UpsampleParameter().scale == 2
    assert caffe_pb2.BNParameter().momentum == pytest.approx(0.9)


def test_dialect_messages_replace_only_the_clashing_fields():
    psp = dialects.dialect("pspnet").message_class("LayerParameter").DESCRIPTOR
    assert psp.fields_by_number[143].name == "interp_param"
    assert "input_param" not in psp.fields_by_name and "swish_param" not in psp.fields_by_name
    assert psp.fields_by_name["convolution_param"].number == 106
    assert psp.fields_by_name["bn_param"].message_type.name == "BNParameter"
    seg = dialects.dialect("segnet").message_class("LayerParameter").DESCRIPTOR
    assert seg.fields_by_name["bn_param"].number == 45
    assert seg.fields_by_name["bn_param"].message_type.name == "SegNetBNParameter"
    assert seg.fields_by_number[137].name == "upsample_param"
    assert "embed_param" not in seg.fields_by_name and "segnet_bn_param" not in seg.fields_by_name
    with pytest.raises(ValueError, match="unknown schema dialect 'caffe2'"):
        dialects.dialect("caffe2")


# ---------------------------------------------------------------- text

@needs_forks
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(FORKS, "**", "*.prototxt"), recursive=True)),
                         ids=os.path.basename)
def test_every_fork_file_parses(path):
    if "labelmap" in path:
        labels = schema.read_text_message(path, caffe_pb2.LabelMap())
        assert labels.item[0].display_name == "background" and labels.item[0].label == 0 and len(labels.item) == 21
    elif "solver" in path:
        solver = schema.read_text_message(path, caffe_pb2.SolverParameter())
        assert (solver.eval_type, solver.ap_version) == ("detection", "11point")
    else:
        net = schema.read_net(path)
        assert len(net.layer) > 20


@needs_forks
def test_segnet_and_pspnet_bn_param_go_to_their_own_fields():
    segnet = schema.read_net(os.path.join(FORKS, "alexgkendall-SegNet-Tutorial/Models/segnet_inference.prototxt"))
    bn = [l for l in segnet.layer if l.type == "BN"]
    assert bn and all(l.HasField("segnet_bn_param") and not l.HasField("bn_param") for l in bn)
    assert bn[0].segnet_bn_param.bn_mode == caffe_pb2.SegNetBNParameter.INFERENCE
    assert bn[0].segnet_bn_param.shift_filler.value == pytest.approx(0.001)
    up = [l for l in segnet.layer if l.type == "Upsample"][0]
    assert (up.upsample_param.scale, up.upsample_param.upsample_h, up.upsample_param.upsample_w) == (2, 23, 30)
    psp = schema.read_net(os.path.join(FORKS, "hszhao-PSPNet/evaluation/prototxt/pspnet50_ADE20K_473.prototxt"))
    bn = [l for l in psp.layer if l.type == "BN"]
    assert bn and all(l.HasField("bn_param") and not l.HasField("segnet_bn_param") for l in bn)
    assert bn[0].bn_param.frozen and bn[0].bn_param.momentum == pytest.approx(0.95)
    interp = [l for l in psp.layer if l.type == "Interp"][0]
    assert (interp.interp_param.height, interp.interp_param.width) == (60, 60)


def test_text_errors_are_netspec_schemas():
    text = 'layer { name: "bn" type: "BN" bn_param { bn_mod: INFERENCE } }'
    with pytest.raises(ParseError) as err:
        schema.parse_prototxt(text, caffe_pb2.NetParameter(), "x.prototxt")
    assert str(err.value).startswith('x.prototxt:1:42: Message type "caffe.BNParameter" has no field named "bn_mod"')


def test_named_dialect_for_text():
    text = 'layer { name: "bn" type: "BN" bn_param { bn_mode: INFERENCE } }'
    net = schema.parse_prototxt(text, caffe_pb2.NetParameter(), dialect="segnet")
    assert net.layer[0].segnet_bn_param.bn_mode == 1
    with pytest.raises(ParseError, match="SegNetBNParameter"):
        schema.parse_prototxt('layer { bn_param { frozen: true } }', caffe_pb2.NetParameter(), dialect="segnet")


def test_yaml_falls_back_too():
    text = "layer:\n- name: bn\n  type: BN\n  bn_param: {bn_mode: INFERENCE}\n"
    net = schema.parse_yaml(text, caffe_pb2.NetParameter())
    assert net.layer[0].segnet_bn_param.bn_mode == 1


def test_pspnet_transform_fields_by_name():
    text = 'layer { type: "ImageData" transform_param { scale_factors: 0.5 scale_factors: 2 crop_width: 473 } }'
    net = schema.parse_prototxt(text, caffe_pb2.NetParameter())
    assert list(net.layer[0].transform_param.scale_factors) == [0.5, 2] and net.layer[0].transform_param.crop_width == 473


# ---------------------------------------------------------------- binary

def test_pspnet_caffemodel(tmp_path):
    interp = field(143, int_field(1, 65) + int_field(2, 33))      # interp_param { height: 65 width: 33 }
    bn = field(152, field(1, field(1, b"constant")) + varint(5 << 3) + varint(1))   # bn_param { frozen }
    data = layer("up", "Interp", interp) + layer("bn", "BN", bn, blob(1.5, 2.5))
    net = schema.read_binary_message(write(tmp_path, data), caffe_pb2.NetParameter())
    up, norm = net.layer
    assert not up.HasField("input_param")
    assert (up.interp_param.height, up.interp_param.width) == (65, 33)
    assert norm.bn_param.frozen and norm.bn_param.slope_filler.type == "constant"
    assert list(norm.blobs[0].data) == [1.5, 2.5]


def test_segnet_caffemodel(tmp_path):
    up = field(137, int_field(1, 4) + int_field(6, 23))           # upsample_param { scale: 4 upsample_h: 23 }
    bn = field(45, int_field(3, 1))                                # bn_param { bn_mode: INFERENCE }
    data = layer("up", "Upsample", up) + layer("bn", "BN", bn, blob(0.25))
    net = schema.read_binary_message(write(tmp_path, data), caffe_pb2.NetParameter())
    up, norm = net.layer
    assert not up.HasField("embed_param")
    assert (up.upsample_param.scale, up.upsample_param.upsample_h) == (4, 23)
    assert norm.segnet_bn_param.bn_mode == 1 and list(norm.blobs[0].data) == [0.25]


def test_ssd_and_fast_rcnn_caffemodel_need_no_dialect(tmp_path):
    prior = field(203, varint(1 << 3 | 5) + b"\x00\x00\xf0\x41")    # prior_box_param { min_size: 30 } (fixed32)
    roi = field(8266711, int_field(1, 7) + int_field(2, 6))
    data = layer("p", "PriorBox", prior) + layer("r", "ROIPooling", roi)
    net = schema.read_binary_message(write(tmp_path, data), caffe_pb2.NetParameter())
    assert list(net.layer[0].prior_box_param.min_size) == [30.0]
    assert (net.layer[1].roi_pooling_param.pooled_h, net.layer[1].roi_pooling_param.pooled_w) == (7, 6)


def test_bvlc_caffemodel_unaffected(tmp_path):
    shape = field(143, field(1, int_field(1, 1) + int_field(1, 3)))   # input_param { shape { dim: 1 dim: 3 } }
    embed = field(137, int_field(1, 10))                              # embed_param { num_output: 10 }
    data = layer("data", "Input", shape) + layer("e", "Embed", embed)
    net = schema.read_binary_message(write(tmp_path, data), caffe_pb2.NetParameter())
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3]
    assert net.layer[1].embed_param.num_output == 10 and not net.layer[1].HasField("upsample_param")


def test_named_dialect_for_binary_and_back(tmp_path):
    # A SegNet net whose only clash is in a layer type the detector does not know.
    data = layer("u", "MyUpsample", field(137, int_field(1, 3)))
    path = write(tmp_path, data)
    assert schema.read_binary_message(path, caffe_pb2.NetParameter()).layer[0].embed_param.num_output == 3
    net = schema.read_binary_message(path, caffe_pb2.NetParameter(), dialect="segnet")
    assert net.layer[0].upsample_param.scale == 3
    again = dialects.dialect("segnet").from_netspec(net).SerializeToString()
    assert again == data


def test_ssd_solver_dialect():
    ssd = dialects.dialect("ssd")
    forked = ssd.message_class("SolverParameter")(eval_type="detection", ap_version="11point", base_lr=0.001)
    raw = forked.SerializeToString()
    assert field(41, b"detection") in raw
    solver = ssd.to_netspec(ssd.message_class("SolverParameter").FromString(raw))
    assert (solver.eval_type, solver.ap_version, solver.base_lr) == ("detection", "11point", pytest.approx(0.001))
    assert not solver.HasField("layer_wise_reduce") and not solver.weights
