# The CPU image: API, completion workers, and synthesis with the Piper voice.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY voicenote ./voicenote
COPY producer_api ./producer_api
COPY stream_workers ./stream_workers
COPY ops ./ops
RUN pip install .
USER nobody
ENTRYPOINT ["voicenote"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
