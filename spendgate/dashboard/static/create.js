// The Create API Key dialog, and the one time the full key is shown.

import { keyDialog, mountLimitFields, readLimits } from "./forms.js";

export function setUpCreate(page) {
  const $ = (id) => document.getElementById(id);
  const created = $("created");
  const token = $("created-token");
  const copied = $("created-copied");

  async function submit(_, fields) {
    const limits = readLimits(fields);
    if (limits === null) {
      return;
    }
    const body = { name: fields.input("name").value, ...limits };
    const key = await page.admin().createKey(page.projectId(), body);
    form.hidden = true;
    created.hidden = false;
    dialog.setAttribute("aria-labelledby", "created-title");
    token.value = key.key;
    token.focus();
    token.select();
    page.announce(`API key ${key.name} created. Copy it now: it is shown only once.`);
    await page.refresh();
  }

  // Closing the dialog, however (Done, Escape), drops the key from the page for good.
  const { dialog, form, fields, open } = keyDialog("create", submit, () => {
    token.value = "";
    copied.textContent = "";
    created.hidden = true;
    dialog.setAttribute("aria-labelledby", "create-title");
    form.hidden = false;
    form.reset();
    fields.input("recurring_limit.unit").dispatchEvent(new Event("change"));
  });
  mountLimitFields(form.querySelector(".limit-slot"), "create");

  $("create-open").addEventListener("click", () => {
    open(null, () => page.focusAfterList("create"));
  });

  $("created-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(token.value);
      copied.textContent = "Copied to the clipboard.";
    } catch {
      // No clipboard access (e.g. plain HTTP to a remote host): leave it selected.
      token.focus();
      token.select();
      copied.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy.";
    }
  });
}
