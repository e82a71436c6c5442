# Tessera API image: CPU torch by default, bundled checkpoints, non-root.
#
#   docker build -t tessera .                                   # CPU torch from PyTorch's CPU index
#   docker build --build-arg TORCH_VARIANT=cu128 -t tessera:cuda .   # CUDA torch (run with a GPU:
#                                                                 # docker-compose.gpu.yml)
# Offline or pinned builds: put the torch wheel (torch-${TORCH_VERSION}+${TORCH_VARIANT}-*.whl for
# the image's CPython) into .wheels/ in the build context; it is then used instead of the index.
# Checkpoints: every checkpoints/*.safetensors in the context is baked in (model name = file stem);
# mount others over /app/checkpoints or point TESSERA_CHECKPOINTS elsewhere.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv

# torch first and pinned (an unpinned torch from PyPI is the multi-GB CUDA build), from .wheels/
# when the context holds the wheel, else from PyTorch's index. The optional .wheel[s] glob needs a
# file that always exists beside it; pyproject.toml is that file.
WORKDIR /build
COPY pyproject.toml constraints.txt .wheel[s] ./
RUN if compgen -G "torch-${TORCH_VERSION}+${TORCH_VARIANT}-*.whl" > /dev/null; then \
        pip install --find-links . "torch==${TORCH_VERSION}+${TORCH_VARIANT}"; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}+${TORCH_VARIANT}"; \
    fi

# the project's dependencies in a layer that only pyproject.toml invalidates, then the project
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["serve"]))' \
        > requirements.txt \
    && pip install --requirement requirements.txt --constraint constraints.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tessera/ tessera/
COPY cli/ cli/
COPY tiles/ tiles/
COPY client/ client/
COPY model/ model/
COPY service/ service/
COPY training/ training/
RUN pip install --no-deps . \
    && tessera --help > /dev/null

# whatever checkpoints the context holds (possibly none: then mount some at run time)
RUN --mount=type=bind,target=/context \
    mkdir -p /app/checkpoints \
    && find /context/checkpoints -maxdepth 1 -name '*.safetensors' -exec cp {} /app/checkpoints/ \; 2>/dev/null; \
    ls -l /app/checkpoints


FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tessera" \
      org.opencontainers.image.description="REST microservice: 32x32 game tiles <-> DC-AE latents"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TESSERA_CHECKPOINTS=/app/checkpoints
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/tessera tessera
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/checkpoints /app/checkpoints
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["tessera", "serve", "--host", "0.0.0.0", "--port", "8000"]
