# tabserve serving image: CUDA runtime + onnxruntime-gpu + the service. No torch, no training code.
#   docker build -t tabserve .
#   docker run --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" tabserve
# Without a GPU (or without --gpus) the same image serves on CPU (device=auto falls back, logged once).
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS base

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv

# The service as a wheel, built where a C compiler is (the optional C accelerators: the /predict
# body decoder and the scoring level lookup); the serving image below carries the wheel, not the
# compiler. The import check after installing it fails the build if they were not compiled.
FROM base AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY monitoring ./monitoring
COPY tabserve ./tabserve
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM base
WORKDIR /app
# Dependencies first, in their own cached layer: the serving dependencies straight from pyproject.toml.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
# Then the service (service, its prediction log and feedback in monitoring/, and the CLI; training/ is
# not in the wheel, so torch can never be imported). The check imports the app as `tabserve serve` does.
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels \
    && python -c "import service.app, service.protocols._records, service.scoring._levels" && useradd --create-home --uid 10001 tabserve

USER tabserve
ENV TABSERVE_MODELS_DIR=/models TABSERVE_HOST=0.0.0.0 TABSERVE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"
CMD ["tabserve", "serve"]
