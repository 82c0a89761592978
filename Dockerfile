# CPU image: the harness, its tests' tools (poppler-utils, PostgreSQL) and torch.
# For a small image pass a CPU-only wheel index: --build-arg TORCH_PIP_ARGS="--index-url URL".
FROM python:3.11-slim
ARG TORCH_PIP_ARGS=""
RUN apt-get update && apt-get install -y --no-install-recommends git poppler-utils postgresql \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir torch==2.13.0 $TORCH_PIP_ARGS && pip install --no-cache-dir -e '.[dev]'
CMD ["llmjepa", "sweep", "collapse-vs-text-ratio", "--budget", "quick", "--workers", "2"]
