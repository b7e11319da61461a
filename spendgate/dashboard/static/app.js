// The API Keys page: sign in, pick a project, list its keys, act on them.

import { Admin, ApiError, session } from "./api.js";
import { setUpCreate } from "./create.js";
import { h } from "./dom.js";
import { Fields, busy, keyDialog } from "./forms.js";
import { setUpIam } from "./iam.js";
import { actionButton, renderKeys } from "./keys.js";
import { setUpLimits } from "./limits.js";
import { setUpUsage } from "./usage.js";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["sign-in", "no-projects", "keys-page"];

const REFUSED = "The gateway refused this admin token.";
const REFUSED_AGAIN = "The gateway refused the admin token; sign in again.";

const state = { admin: null, projectId: null, keys: new Map() };

function show(section) {
  for (const id of SECTIONS) {
    $(id).hidden = id !== section;
  }
  $("top-controls").hidden = section === "sign-in";
}

function announce(message) {
  $("status").textContent = message;
}

function alertUser(message) {
  $("alert").textContent = message;
  $("alert").hidden = !message;
}

const signInFields = new Fields($("sign-in-form"), $("alert"));

function signOut(reason) {
  session.clear();
  state.admin = null;
  state.keys = new Map();
  for (const dialog of document.querySelectorAll("dialog[open]")) {
    dialog.close();
  }
  $("keys-body").replaceChildren();
  alertUser("");
  show("sign-in");
  signInFields.clear();
  if (reason) {
    signInFields.show("admin-token", reason);
  }
  $("admin-token").focus();
}

/** Sign in with `token`: it is kept (in this tab's sessionStorage) once the gateway took it. */
async function enter(token) {
  const admin = new Admin(token, () => {
    if (state.admin === admin) {
      signOut(REFUSED_AGAIN);
    }
  });
  const projects = (await admin.projects()).data;
  session.save(token);
  state.admin = admin;
  const select = $("project-select");
  select.replaceChildren(
    ...projects.map((project) =>
      h("option", { value: project.id }, `${project.name} (${project.plan})`),
    ),
  );
  if (projects.length === 0) {
    show("no-projects");
    return;
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  state.projectId = projects.some((p) => p.id === wanted) ? wanted : projects[0].id;
  select.value = state.projectId;
  await refresh();
  show("keys-page");
}

/** Load the project's keys and draw them. */
async function refresh() {
  const projectId = state.projectId;
  const listing = await state.admin.keys(projectId);
  if (projectId !== state.projectId) {
    return; // another project was picked meanwhile
  }
  state.keys = new Map(listing.data.map((key) => [key.id, key]));
  renderKeys(listing);
}

const page = {
  admin: () => state.admin,
  projectId: () => state.projectId,
  refresh,
  announce,
  /** Where focus goes when a dialog closes and its button is gone (or disabled). */
  focusAfterList(fallback) {
    const create = $("create-open");
    return fallback === "create" && !create.disabled ? create : $("keys-title");
  },
};

function setUpSignIn() {
  const input = $("admin-token");
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    signInFields.clear();
    const token = input.value.trim();
    if (!token) {
      signInFields.show("admin-token", "Enter the admin token.");
      input.focus();
      return;
    }
    try {
      await busy($("sign-in-form"), () => enter(token));
    } catch (error) {
      if (!(error instanceof ApiError)) {
        throw error;
      }
      const refused = error.status === 401;
      signInFields.show("admin-token", refused ? REFUSED : error.message);
      input.focus();
      return;
    }
    input.value = "";
    $("keys-title").focus();
  });
  $("sign-out").addEventListener("click", () => {
    signOut(null);
    announce("Signed out. The admin token was forgotten.");
  });
}

function setUpProjects() {
  $("project-select").addEventListener("change", async (event) => {
    state.projectId = event.target.value;
    history.replaceState(null, "", `#${encodeURIComponent(state.projectId)}`);
    alertUser("");
    await refresh().catch(reportError);
  });
}

async function toggle(key) {
  const status = key.status === "active" ? "inactive" : "active";
  await state.admin.updateKey(key.id, { status });
  await refresh();
  actionButton(key.id, "toggle")?.focus();
  announce(`API key ${key.name} ${status === "active" ? "enabled" : "disabled"}.`);
}

function setUpDelete() {
  async function submit(key) {
    await state.admin.deleteKey(key.id);
    await refresh();
    dialog.close();
    announce(`API key ${key.name} deleted.`);
  }
  const { dialog, open } = keyDialog("delete", submit);
  return (key) => {
    $("delete-title").textContent = `Delete API key ${key.name}`;
    $("delete-text").textContent =
      `Delete “${key.name}” (${key.preview}) for good? Requests with this key are ` +
      "refused at once and it cannot be restored. Its usage records stay in the ledger.";
    open(key, () => page.focusAfterList("create"));
  };
}

function reportError(error) {
  if (error instanceof ApiError) {
    if (error.status !== 401) {
      alertUser(error.message);
    }
    return;
  }
  throw error;
}

function setUpActions() {
  const actions = {
    limits: setUpLimits(page),
    toggle,
    iam: setUpIam(page),
    usage: setUpUsage(page),
    delete: setUpDelete(),
  };
  $("keys-body").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    const key = button && state.keys.get(button.dataset.keyId);
    if (!key) {
      return;
    }
    alertUser("");
    button.disabled = true;
    try {
      await actions[button.dataset.action](key);
    } catch (error) {
      reportError(error);
    } finally {
      button.disabled = false;
    }
  });
}

async function start() {
  setUpSignIn();
  setUpProjects();
  setUpCreate(page);
  setUpActions();
  const token = session.token();
  if (!token) {
    show("sign-in");
    return;
  }
  try {
    await enter(token);
  } catch (error) {
    if (!(error instanceof ApiError)) {
      throw error;
    }
    signOut(error.status === 401 ? REFUSED_AGAIN : error.message);
  }
}

start();
