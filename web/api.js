// The REST client: every call carries the user's token in the authorization header and
// turns problem+json answers into ApiError. A 401 anywhere logs the user out with the
// server's own explanation (expired, bad signature, ...).

const KEY = 'doppel.token';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || 'http-' + status;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || '';
    this.problem = problem;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** Calls the API. body: a JS value (sent as JSON) or {raw, type} for bytes. */
export async function api(method, path, body, { silent401 = false } = {}) {
  const headers = { authorization: 'Bearer ' + (token() || '') };
  let payload;
  if (body && body.raw !== undefined) {
    headers['content-type'] = body.type;
    payload = body.raw;
  } else if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, { code: 'network', title: 'The node did not answer', detail: String(e.message || e) });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!response.ok) {
    const err = new ApiError(response.status, json && typeof json === 'object' ? json : { detail: text });
    if (response.status === 401 && !silent401) {
      window.dispatchEvent(new CustomEvent('doppel:unauthorized', { detail: err }));
    }
    throw err;
  }
  return json;
}

export const t = (tenant) => `/v1/tenants/${encodeURIComponent(tenant)}`;
export const enc = encodeURIComponent;
