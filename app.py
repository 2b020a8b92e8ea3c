"""The NeurOp-Diff web app as a Hugging Face Space (Gradio SDK), or locally with ``python app.py``.

``neurop-diff serve`` runs the same app with options (``--model``, ``--host``, ``--port``, limits).
"""

import sys
from pathlib import Path

try:
    import neurop_diff_diffusers  # noqa: F401
except ImportError:  # a Space that installed the dependencies only: this checkout's package
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from neurop_diff_diffusers.app import MAX_UPLOAD_BYTES, build_app

demo = build_app()

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_UPLOAD_BYTES)
