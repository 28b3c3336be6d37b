"""A local stand-in for Google Cloud Storage: gs://<bucket>/<name> is <root>/<bucket>/<name>.

Two doors open onto the same folder, one for each way the libraries reach gs://:

- `Backend`: an etils.epath backend (what gcsfs or TensorFlow's gfile are in
  production) for every file jaxpretrain, TFDS and Orbax open through epath;
- `serve`: the part of the Cloud Storage JSON API that TensorStore's `gcs`
  driver speaks (media download with ranges and generation preconditions, media
  upload, listing, deletion), so Orbax's arrays go through TensorStore's real
  GCS driver, pointed here by `TENSORSTORE_GCS_HTTP_URL`.
"""

from collections.abc import Iterator
import contextlib
import http.server
import json
import os
import threading
import time
import urllib.parse

from etils.epath import backend as epath_backend


class Backend:
  """An epath backend for gs:// URIs that keeps gs://<bucket>/<name> at <root>/<bucket>/<name>."""

  def __init__(self, root: str):
    self.root = root

  def local(self, uri) -> str:
    text = os.fspath(uri)
    assert text.startswith('gs://'), f'the gs:// backend was handed {text!r}'
    return os.path.join(self.root, text[len('gs://'):])

  def _uri(self, path: str) -> str:
    return 'gs://' + os.path.relpath(path, self.root)

  def __getattr__(self, name):
    method = getattr(epath_backend.os_backend, name)

    def call(path, *args, **kwargs):
      args = [self.local(a) if isinstance(a, str) and a.startswith('gs://') else a for a in args]
      out = method(self.local(path), *args, **kwargs)
      if name == 'glob':
        return [self._uri(p) for p in out]
      if name == 'walk':
        return ((self._uri(d), dirs, files) for d, dirs, files in out)
      return out

    return call


class _Handler(http.server.BaseHTTPRequestHandler):
  """/storage/v1/b/<bucket>/o[/<name>] and /upload/storage/v1/b/<bucket>/o?name=<name>."""
  root = ''
  _lock = threading.Lock()
  _last_generation = 0

  def log_message(self, *args):
    del args  # Quiet.

  def _reply(self, code: int, body: bytes = b'', headers: dict[str, str] | None = None):
    self.send_response(code)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _parse(self) -> tuple[list[str], dict[str, str]]:
    url = urllib.parse.urlsplit(self.path)
    return url.path.split('/'), dict(urllib.parse.parse_qsl(url.query))

  def _file(self, bucket: str, name: str) -> str:
    return os.path.join(self.root, bucket, name)

  @staticmethod
  def _generation(file: str) -> str:
    # A file's generation is its modification time, which every upload makes unique.
    return str(os.stat(file).st_mtime_ns) if os.path.isfile(file) else '0'

  def _metadata(self, bucket: str, name: str) -> dict[str, str]:
    file = self._file(bucket, name)
    return {'bucket': bucket, 'name': name, 'size': str(os.path.getsize(file)),
            'generation': self._generation(file), 'metageneration': '1'}

  def _failed_precondition(self, query: dict[str, str], file: str) -> int | None:
    generation = self._generation(file)
    if query.get('ifGenerationMatch', generation) != generation:
      return 412
    if query.get('ifGenerationNotMatch') == generation:
      return 304
    return None

  def _json(self, value: dict) -> None:
    self._reply(200, json.dumps(value).encode(), {'Content-Type': 'application/json'})

  def do_GET(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    bucket = parts[4]
    if len(parts) == 6 or not parts[6]:  # Listing.
      base = os.path.join(self.root, bucket)
      names = sorted(os.path.relpath(os.path.join(d, f), base)
                     for d, _, files in os.walk(base) for f in files)
      names = [n for n in names if n.startswith(query.get('prefix', ''))
               and n >= query.get('startOffset', '')
               and ('endOffset' not in query or n < query['endOffset'])]
      return self._json({'items': [self._metadata(bucket, n) for n in names]})
    name = urllib.parse.unquote(parts[6])
    file = self._file(bucket, name)
    if not os.path.isfile(file):
      return self._reply(404)
    if code := self._failed_precondition(query, file):
      return self._reply(code)
    if query.get('alt') != 'media':
      return self._json(self._metadata(bucket, name))
    with open(file, 'rb') as f:
      data = f.read()
    headers = {'x-goog-generation': self._generation(file),
               'Content-Type': 'application/octet-stream'}
    if 'Range' not in self.headers:
      return self._reply(200, data, headers)
    first, last = self.headers['Range'].split('=')[1].split('-')
    start = len(data) - int(last) if not first else int(first)
    stop = len(data) if not first or not last else int(last) + 1
    headers['Content-Range'] = f'bytes {start}-{stop - 1}/{len(data)}'
    return self._reply(206, data[start:stop], headers)

  def do_POST(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    bucket, name = parts[5], query['name']
    file = self._file(bucket, name)
    body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
    with self._lock:
      if self._failed_precondition(query, file):
        return self._reply(412)
      os.makedirs(os.path.dirname(file), exist_ok=True)
      with open(file, 'wb') as f:
        f.write(body)
      # File times are coarser than back-to-back uploads: each upload gets a later one.
      generation = max(time.time_ns(), _Handler._last_generation + 1)
      _Handler._last_generation = generation
      os.utime(file, ns=(generation, generation))
    return self._json(self._metadata(bucket, name))

  def do_DELETE(self):  # pylint: disable=invalid-name
    parts, query = self._parse()
    file = self._file(parts[4], urllib.parse.unquote(parts[6]))
    if not os.path.isfile(file):
      return self._reply(404)
    if code := self._failed_precondition(query, file):
      return self._reply(code)
    os.remove(file)
    return self._reply(204)


@contextlib.contextmanager
def serve(root: str) -> Iterator[str]:
  """Serves `root` as Cloud Storage on a local port; yields the URL for TENSORSTORE_GCS_HTTP_URL."""
  handler = type('Handler', (_Handler,), {'root': root})
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()
