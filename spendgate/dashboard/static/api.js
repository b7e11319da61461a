// The admin API client and the admin token's one home: this tab's sessionStorage.
//
// The token is never put in localStorage, a cookie or a URL; it travels only in the
// Authorization header of same-origin requests to the admin API.

const TOKEN_KEY = "spendgate.admin_token";

// The admin API sits beside the dashboard: /dashboard/ -> /admin/v1/ (also behind a
// reverse proxy that mounts the gateway under a path prefix).
const ADMIN_BASE = new URL("../admin/v1/", document.baseURI);

export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  save(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An admin API refusal: the envelope {error: {message, type, param, code}}. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && typeof body === "object" && body.error) || {};
    super(error.message || `the gateway answered HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = typeof error.param === "string" && error.param !== "" ? error.param : null;
  }

  /** The message without the "field: " the server puts before a field's error. */
  get detail() {
    const prefix = this.param === null ? null : `${this.param}: `;
    return prefix !== null && this.message.startsWith(prefix)
      ? this.message.slice(prefix.length)
      : this.message;
  }
}

const id = (value) => encodeURIComponent(value);

export class Admin {
  /** `onUnauthorized(error)` runs when the gateway refuses the token (401). */
  constructor(token, onUnauthorized) {
    this.token = token;
    this.onUnauthorized = onUnauthorized;
  }

  async request(method, path, body) {
    const init = {
      method,
      headers: { Authorization: `Bearer ${this.token}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, ADMIN_BASE), init);
    } catch {
      const message = "the gateway did not answer; check that it is running and try again";
      throw new ApiError(0, { error: { message, code: "network_error" } });
    }
    if (response.status === 204) {
      return null;
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new ApiError(response.status, data);
      if (response.status === 401) {
        this.onUnauthorized(error);
      }
      throw error;
    }
    return data;
  }

  projects() {
    return this.request("GET", "projects");
  }

  keys(projectId) {
    return this.request("GET", `projects/${id(projectId)}/keys`);
  }

  createKey(projectId, body) {
    return this.request("POST", `projects/${id(projectId)}/keys`, body);
  }

  updateKey(keyId, changes) {
    return this.request("PATCH", `keys/${id(keyId)}`, changes);
  }

  deleteKey(keyId) {
    return this.request("DELETE", `keys/${id(keyId)}`);
  }

  rules(keyId) {
    return this.request("GET", `keys/${id(keyId)}/iam-rules`);
  }

  putRules(keyId, rules) {
    return this.request("PUT", `keys/${id(keyId)}/iam-rules`, rules);
  }

  /** One page of the key's requests (the last 30 days, the server's default range). */
  usage(keyId, limit, cursor) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) {
      query.set("cursor", cursor);
    }
    return this.request("GET", `keys/${id(keyId)}/usage?${query}`);
  }
}
