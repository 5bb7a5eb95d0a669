// The API client: the session token in localStorage, JSON in and out, errors as `ApiError` with the
// server's `detail`. A 401 anywhere ends the session (the app shows the sign-in page with a reason).

const TOKEN_KEY = 'fastvm.token';

export class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

let onSignedOut = () => {};

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

async function detailOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return [body, body && typeof body.detail === 'string' ? body.detail : `HTTP ${response.status}`];
  } catch {
    return [null, text || `HTTP ${response.status}`];
  }
}

/** Calls `method path` with an optional JSON body; resolves to the parsed answer. */
export async function call(method, path, body) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = 'Bearer ' + t;
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const [parsed, detail] = await detailOf(response);
  if (response.status === 401 && t && path !== '/api/auth/login') {
    setToken(null);
    onSignedOut('Your session has ended: sign in again.');
  }
  if (!response.ok) {
    throw new ApiError(response.status, detail, Number(response.headers.get('Retry-After')) || 0);
  }
  return parsed;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body);
export const put = (path, body) => call('PUT', path, body);
export const del = (path) => call('DELETE', path);

/** A binary answer (an image) as a Blob, with the session's token. */
export async function getBlob(path) {
  const response = await fetch(path, { headers: { Authorization: 'Bearer ' + token() } });
  if (!response.ok) {
    const [, detail] = await detailOf(response);
    throw new ApiError(response.status, detail, 0);
  }
  return response.blob();
}

/**
 * POSTs a multipart form with the session's token, reporting upload progress (0..1) as it goes
 * (XMLHttpRequest: fetch reports none). Resolves to the parsed answer; rejects with an ApiError, or
 * with `{ aborted: true }` after `abort()`.
 */
export function upload(path, form, onProgress) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, (body && body.detail) || xhr.statusText || 'HTTP ' + xhr.status, 0));
    };
    xhr.onerror = () => reject(new ApiError(0, 'the upload failed', 0));
    xhr.onabort = () => reject({ aborted: true });
  });
  xhr.open('POST', path);
  xhr.setRequestHeader('Authorization', 'Bearer ' + token());
  xhr.send(form);
  return { done, abort: () => xhr.abort() };
}
