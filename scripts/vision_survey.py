"""Vision survey: the default verdict on every torchvision family and ~70 timm models.

The slow suite (``tests/standard_models.py``) pins a few architectures; this re-runs the wider
survey behind docs/standard-models.md ("A wider sweep") after a rule or converter change, to
catch what the suite does not: each model at its library's own initialization (``weights=None``
/ ``pretrained=False``), batch 2 at 64 px where it accepts that (else its native size), exported
with each default exporter and diagnosed with the default config (no remedy verification).
Every case runs in its own process with a time limit, so one model that hangs or runs out of
memory costs only its own row. Prints one line per case and a count per status; ``--json``
keeps the rows. Healthy, or ``inconclusive`` by ``folded_batchnorm`` on a default export of a
BatchNorm net, is the expected answer; anything else is worth a look.

Usage::

    .venv/bin/python scripts/vision_survey.py                      # everything (about an hour)
    .venv/bin/python scripts/vision_survey.py --models tv:resnet50,timm:cait_xxs24_224
    .venv/bin/python scripts/vision_survey.py --exporters dynamo --json survey.json
    .venv/bin/python scripts/vision_survey.py --more --exporters dynamo,legacy_unfolded
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TORCHVISION = (
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
    "resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1",
    "swin_t", "swin_v2_t", "vgg11", "vgg11_bn", "vit_b_16", "wide_resnet50_2")
TIMM = (
    "resnet50d", "resnest14d", "regnety_002", "efficientnet_b0", "mobilenetv3_small_100",
    "ghostnet_100", "dla34", "cspresnet50", "convnext_atto", "convnextv2_atto", "mobilevit_xxs",
    "levit_128s", "pit_ti_224", "cait_xxs24_224", "resmlp_12_224", "mixer_s16_224",
    "gmlp_ti16_224", "poolformer_s12", "nf_resnet26", "nfnet_l0", "repvgg_a0",
    "coatnet_nano_rw_224", "efficientformer_l1", "edgenext_xx_small", "fastvit_t8",
    "tiny_vit_5m_224", "deit_tiny_patch16_224", "deit3_small_patch16_224",
    "xcit_nano_12_p16_224", "crossvit_tiny_240", "hrnet_w18_small", "volo_d1_224",
    "sequencer2d_s", "convmixer_768_32", "xception41", "dpn68", "hgnetv2_b0",
    "repghostnet_050", "efficientvit_b0", "mobilenetv4_conv_small", "inception_next_tiny",
    "caformer_s18", "convformer_s18", "davit_tiny", "gcvit_xxtiny", "focalnet_tiny_srf",
    "twins_svt_small", "tnt_s_patch16_224", "coat_lite_tiny", "starnet_s1", "rdnet_tiny",
    "mambaout_femto", "swinv2_cr_tiny_ns_224", "eva02_tiny_patch14_224")
# The fourth survey (2026-12-06): 94 more timm models, families the lists above lack.
TIMM_MORE = (
    "resnet18d", "seresnet18", "ecaresnet26t", "skresnet18", "res2net50_14w_8s", "resnext26ts",
    "gernet_s", "regnetz_b16", "rexnet_100", "lcnet_050", "hardcorenas_a", "tinynet_e",
    "mixnet_s", "fbnetc_100", "spnasnet_100", "semnasnet_050", "efficientnetv2_rw_t",
    "tf_efficientnetv2_b0", "ghostnetv2_100", "ese_vovnet19b_dw", "selecsls42b", "cspdarknet53",
    "cs3darknet_s", "darknet17", "dla46_c", "hrnet_w18_small_v2", "tresnet_m", "inception_v4",
    "inception_resnet_v2", "resnetv2_50", "resnetv2_50x1_bit", "resnetrs50", "lambda_resnet26t",
    "halonet26t", "botnet26t_256", "eca_halonext26ts", "bat_resnext26ts", "gcresnet33ts",
    "convit_tiny", "visformer_tiny", "nest_tiny", "pvt_v2_b0", "mvitv2_tiny", "hiera_tiny_224",
    "efficientformerv2_s0", "fastvit_sa12", "repvit_m0_9", "nextvit_small",
    "vit_tiny_patch16_224", "vit_relpos_small_patch16_224", "vit_srelpos_small_patch16_224",
    "flexivit_small", "vit_medium_patch16_gap_256", "eva02_small_patch14_224",
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swin_s3_tiny_224",
    "maxvit_nano_rw_256", "maxxvit_rmlp_nano_rw_256", "coatnet_0_rw_224", "cait_xxs36_224",
    "levit_conv_128s", "xcit_tiny_12_p16_224", "crossvit_9_240", "pit_xs_224",
    "twins_pcpvt_small", "resmlp_24_224", "gmixer_12_224", "convnextv2_pico",
    "convnext_femto_ols", "edgenext_x_small", "efficientvit_m0", "fasternet_t0",
    "vitamin_small_224", "mobileone_s0", "mobilenetv4_hybrid_medium", "hgnet_tiny", "dm_nfnet_f0",
    "eca_nfnet_l0", "nf_regnet_b0", "resnet10t", "seresnext26d_32x4d", "xception65", "dpn48b",
    "inception_v3", "vgg11_bn", "vit_little_patch16_reg4_gap_256",
    "deit_tiny_distilled_patch16_224", "tiny_vit_11m_224", "poolformerv2_s12", "rdnet_small",
    "mambaout_kobe", "gcvit_xtiny", "focalnet_tiny_lrf")
EXPORTERS = ("legacy", "dynamo")

# One case, run in a fresh interpreter: build, pick the first input size the model accepts,
# export with the exporter's defaults, diagnose; print one JSON line.
_CASE = r'''
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from pathlib import Path
from tests.standard_models import Exportable, export_to
from diagnostics import diagnose
library, name, exporter, folder = sys.argv[1:5]
torch.manual_seed(0)
if library == "tv":
    import torchvision
    inception = name in ("googlenet", "inception_v3")
    extra = {"aux_logits": False, "init_weights": True} if inception else {}
    model = torchvision.models.get_model(name, weights=None, **extra)
    sizes = {"inception_v3": [75, 299], "vit_b_16": [224], "maxvit_t": [224]}.get(name, [64, 224])
else:
    import timm
    model = timm.create_model(name, pretrained=False, num_classes=10)
    native = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    sizes = [64, native] if native != 64 else [64]
model.eval()
row = {"model": f"{library}:{name}", "exporter": exporter}
for size in sizes:
    x = torch.randn(2, 3, size, size)
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        continue
    row["size"] = size
    path = Path(folder) / "model.onnx"
    try:
        export_to(Exportable(model, (x,), ("image",)), exporter, path)
    except Exception as exc:
        row.update(status="export failed", detail=f"{type(exc).__name__}: {str(exc)[:160]}")
        break
    try:
        report = diagnose(str(path), config={"verify_remedies": False})
    except Exception as exc:
        row.update(status="error", detail=f"{type(exc).__name__}: {str(exc)[:200]}")
        break
    verdict = report.verdict
    row.update(status=str(verdict.status), summary=verdict.summary[:240],
               rules=[rule.rule for rule in verdict.evidence.rules if rule.fired])
    break
else:
    row.update(status="build failed", detail="no input size the model accepts")
print(json.dumps(row))
'''


def run_case(model: str, exporter: str, timeout: float) -> dict:
    """One survey row; a case that crashes or runs past ``timeout`` says so in its row."""
    library, name = model.split(":", 1)
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CASE, library, name, exporter, folder], cwd=ROOT,
                capture_output=True, text=True, timeout=timeout,
                env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                     "PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            return {"model": model, "exporter": exporter, "status": "timeout"}
    # The row may share a line with what torch's C++ side printed to the same pipe (the legacy
    # exporter dumps its whole IR graph on a failed export), so look for it anywhere in a line.
    lines = [line[line.index('{"model"'):] for line in done.stdout.splitlines()
             if '{"model"' in line]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": model, "exporter": exporter, "status": "crashed", "detail": tail[:200]}
    return json.loads(lines[-1])


def expected(row: dict) -> bool:
    return row["status"] == "healthy" or (
        row["status"] == "inconclusive" and row.get("rules", [None])[0] == "folded_batchnorm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated tv:NAME / timm:NAME (default: all)")
    parser.add_argument("--more", action="store_true",
                        help="the fourth survey's 94 timm models instead of the first lists")
    parser.add_argument("--exporters", default=",".join(EXPORTERS))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    if args.models:
        models = args.models.split(",")
    elif args.more:
        models = [f"timm:{name}" for name in TIMM_MORE]
    else:
        models = [f"tv:{name}" for name in TORCHVISION] + [f"timm:{name}" for name in TIMM]
    rows = []
    for exporter in args.exporters.split(","):
        for model in models:
            row = run_case(model, exporter, args.timeout)
            rows.append(row)
            mark = "  " if expected(row) else "! "
            print(f"{mark}{model:36s} {exporter:7s} {row['status']:14s} "
                  f"{row.get('summary') or row.get('detail', '')}"[:200], flush=True)
    counts = collections.Counter("expected" if expected(row) else row["status"] for row in rows)
    print(dict(counts))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
