# The CPU image: API, completion and webhook workers, and synthesis with the Piper voice.
# Non-root (uid 10001) with its data directory (Faust's, the working directory) writable; the code and
# the virtualenv are root-owned and read-only to it. Tags are pinned; bump them deliberately.
FROM python:3.11.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 voicenote \
 && useradd --system --uid 10001 --gid voicenote --home-dir /var/lib/voicenote --shell /usr/sbin/nologin voicenote \
 && install -d -o voicenote -g voicenote -m 0750 /var/lib/voicenote
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY voicenote ./voicenote
COPY producer_api ./producer_api
COPY stream_workers ./stream_workers
COPY ops ./ops
COPY clients/python/src ./clients/python/src
RUN pip install .
# Containers serve worker metrics and probes to the network (the embedded default keeps them on loopback).
ENV HOME=/var/lib/voicenote VOICENOTE_WORKER__WEB_HOST=0.0.0.0 VOICENOTE_STORAGE__LOCAL_DIR=/var/lib/voicenote/audio
WORKDIR /var/lib/voicenote
USER 10001:10001
EXPOSE 8000 6066
ENTRYPOINT ["voicenote"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
