#!/usr/bin/env python
"""Evaluate NeurOp-Diff, its neural-operator prior, bicubic and SR3 under the paper's protocol.

A thin command line over [`neurop_diff_diffusers.evaluation.run`]; `python training/evaluate.py --help` lists the
options.

Example:
    python training/evaluate.py --pipeline preset:tiny --data_dir ../shared/data/UCMerced_LandUse \
        --max_images 3 --scales 2 4 --num_inference_steps 5 --output_dir /tmp/eval_demo
"""

from neurop_diff_diffusers.cli.evaluate import main

if __name__ == "__main__":
    main()
