# geodetect on CUDA. Build:  docker build -t geodetect .
# Run:    docker run --gpus all -v $PWD:/work -w /work geodetect infer run/model.pt scene.tif --device cuda
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first and pinned (its wheels carry their CUDA libraries), then the package.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md /src/
COPY geodetect /src/geodetect
RUN pip install /src

WORKDIR /work
ENTRYPOINT ["geodetect"]
CMD ["--help"]
