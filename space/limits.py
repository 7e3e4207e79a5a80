"""The app's limits: every request's cost is bounded by these (benchmarks/app_limits.py measures the worst allowed
request). Their own module, so that ``ui`` (the page) and ``ood`` (the calibration, which feeds the model what the
app feeds it) both read them without importing each other."""

from __future__ import annotations

from . import inputs

MAX_UPLOAD_BYTES = inputs.MAX_FILE_BYTES  # gradio's max_file_size (launch) and the handlers' own check
MAX_PIXELS = inputs.MAX_PIXELS  # decode limit of an upload
WORK_MAX_SIDE = 1024  # photos are reduced to this long side on load; results are shown at that size
MASK_MAX_SIDE = 1024  # masks and canvases are reduced (nearest) to this; synthesized images come back at it
MAX_STEPS = 25  # steps of any one integration
MAX_SAMPLES = 8  # synthesized images per request
MAX_SYNTHESIS_CALLS = 100  # samples x network calls per synthesis request
MAX_FLOW_STEPS = 25  # Flow: steps (frames shown: at most MAX_FLOW_FRAMES per direction)
SEED_MAX = 2**63 - 1
CANVAS_SIZE = (480, 360)  # CamVid's frame (W, H)
# Request bodies, refused before they are read (body_limit.BodySizeLimit): a JSON call may carry one pasted (base64)
# image of MAX_UPLOAD_BYTES, an upload two files of it.
MAX_JSON_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 2**20
MAX_UPLOAD_BODY_BYTES = 2 * MAX_UPLOAD_BYTES + 2**20
# Sessions gradio keeps in memory (its ``state_session_capacity``, default 10,000): each API call is a session of
# ~170 KB (a copy of the page's config), so 10,000 refused calls held 1.7 GB. The oldest go first; a page whose
# session went only loses the overlay re-blend of its last segmentation.
MAX_SESSIONS = 256
# The app's own files on disk (uploads, outputs, pasted images) together, and one client's uploads (space/disk.py).
# The target is 100 MB; the index cannot see everything on disk at every moment (an output image is saved before it
# is indexed, gradio's per-upload folders), and without a margin the measured peak reached 108 MB.
MAX_DISK_BYTES = 90 * 2**20
MAX_CLIENT_UPLOAD_BYTES = MAX_UPLOAD_BODY_BYTES  # one full upload request
