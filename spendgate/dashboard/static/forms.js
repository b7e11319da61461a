// Form plumbing shared by the dialogs: wiring labels and errors to fields, showing the
// admin API's errors next to the field they name, reading the limit fields.

import { ApiError } from "./api.js";
import { openDialog, setUpDialog } from "./dom.js";

// Recurring windows: from 1 hour to 12 months, as the server checks them
// (spendgate/enforcement/windows.py MAX_EVERY; a test keeps the two the same).
export const MAX_EVERY = { hour: 8760, day: 365, week: 52, month: 12 };

let wired = 0;

/** Give every [data-field] under `root` an id, and point its label, hint and error at it. */
export function wire(root, prefix = `f${++wired}`) {
  for (const input of root.querySelectorAll("[data-field]")) {
    const field = input.dataset.field;
    const id = `${prefix}-${field.replace(/[^A-Za-z0-9]+/g, "-")}`;
    input.id = id;
    const label = root.querySelector(`[data-for="${field}"]`);
    if (label) {
      label.htmlFor = id;
    }
    const described = [];
    for (const [kind, attribute] of [["hint", "data-hint"], ["error", "data-error"]]) {
      const element = root.querySelector(`[${attribute}="${field}"]`);
      if (element) {
        element.id = `${id}-${kind}`;
        described.push(element.id);
      }
    }
    if (described.length) {
      input.setAttribute("aria-describedby", described.join(" "));
    }
  }
}

/** The error slots of one form: one per field, and one for the form as a whole. */
export class Fields {
  constructor(root, formError) {
    this.root = root;
    this.formError = formError;
  }

  input(field) {
    return this.root.querySelector(`[data-field="${field}"]`);
  }

  clear() {
    for (const element of this.root.querySelectorAll("[data-error]")) {
      element.textContent = "";
      element.hidden = true;
    }
    for (const input of this.root.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
    }
    this.formError.textContent = "";
    this.formError.hidden = true;
  }

  /** Show `message` beside `field`; false when the form has no slot for it. */
  show(field, message) {
    const slot = this.root.querySelector(`[data-error="${CSS.escape(field)}"]`);
    if (!slot) {
      return false;
    }
    slot.textContent = message;
    slot.hidden = false;
    const input = this.input(field) || slot.closest(".field")?.querySelector("input, select");
    if (input) {
      input.setAttribute("aria-invalid", "true");
    }
    return true;
  }

  showForm(message) {
    this.formError.textContent = message;
    this.formError.hidden = false;
  }

  /** An admin API error beside the field its `param` names, else for the whole form. */
  showApiError(error, param = error.param) {
    if (param !== null && param !== undefined && this.show(param, error.detail)) {
      this.focusFirstInvalid();
      return;
    }
    this.showForm(error.message);
  }

  focusFirstInvalid() {
    const invalid = this.root.querySelector("[aria-invalid='true']");
    if (invalid) {
      invalid.focus();
    }
  }
}

/** Put the limit fields (a clone of #limit-fields) into `slot`, ids prefixed by `prefix`. */
export function mountLimitFields(slot, prefix) {
  slot.replaceChildren(document.getElementById("limit-fields").content.cloneNode(true));
  wire(slot.closest("form"), prefix);
  const every = slot.querySelector('[data-field="recurring_limit.every"]');
  const unit = slot.querySelector('[data-field="recurring_limit.unit"]');
  const bound = () => {
    every.max = String(MAX_EVERY[unit.value]);
  };
  unit.addEventListener("change", bound);
  bound();
}

/** The exact decimal text of a money input ("50.10" -> "50.1"), or null if it is not one. */
export function canonicalMoney(text) {
  const found = /^\s*([0-9]*)(?:\.([0-9]*))?\s*$/.exec(text);
  if (!found || (found[1] === "" && !found[2])) {
    return null;
  }
  const whole = found[1].replace(/^0+(?=[0-9])/, "") || "0";
  const fraction = (found[2] || "").replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : whole;
}

/** The server's words for a window out of bounds, or null when `every` `unit` is fine. */
export function windowError(everyText, unit) {
  const limit = MAX_EVERY[unit];
  if (limit === undefined) {
    return ["recurring_limit.unit", "must be one of hour, day, week, month"];
  }
  const every = Number(everyText);
  if (everyText.trim() === "" || !Number.isInteger(every)) {
    return ["recurring_limit.every", "must be an integer"];
  }
  if (every < 1 || every > limit) {
    return [
      "recurring_limit.every",
      `must be 1 to ${limit} for unit ${unit} (1 hour to 12 months)`,
    ];
  }
  return null;
}

/**
 * The limit fields as the admin API takes them: {usage_limit, recurring_limit}, each null
 * when its amount is empty. Money goes as the text typed (the server reads it exactly and
 * says what is wrong with it); a window out of bounds is refused here, in the server's
 * words, beside its field: then this returns null.
 */
export function readLimits(fields) {
  const text = (field) => fields.input(field).value.trim();
  const usage = text("usage_limit");
  const amount = text("recurring_limit.amount");
  const every = text("recurring_limit.every");
  const unit = fields.input("recurring_limit.unit").value;
  const limits = { usage_limit: usage === "" ? null : usage, recurring_limit: null };
  if (amount !== "") {
    const invalid = windowError(every, unit);
    if (invalid) {
      fields.show(...invalid);
      fields.focusFirstInvalid();
      return null;
    }
    limits.recurring_limit = { amount, every: Number(every), unit };
  }
  return limits;
}

/** Fill the limit fields from a key. */
export function fillLimits(fields, key) {
  fields.input("usage_limit").value = key.usage_limit ?? "";
  const recurring = key.recurring_limit;
  fields.input("recurring_limit.amount").value = recurring ? recurring.amount : "";
  fields.input("recurring_limit.every").value = recurring ? String(recurring.every) : "1";
  const unit = fields.input("recurring_limit.unit");
  unit.value = recurring ? recurring.unit : "month";
  unit.dispatchEvent(new Event("change"));
}

/** Disable a form's submit button while `work` runs. */
export async function busy(form, work) {
  const submit = form.querySelector("button[type=submit]");
  submit.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    submit.disabled = false;
    form.removeAttribute("aria-busy");
  }
}

/**
 * The dialog `#<name>-dialog` and its form `#<name>-form`, about one key at a time.
 * `submit(key, fields)` runs when the form is sent, its button disabled meanwhile; an
 * ApiError it throws is shown beside the field it names (else in `#<name>-form-error`).
 * Closing the dialog, however (a [data-close] button, Escape), runs `onClose`.
 */
export function keyDialog(name, submit, onClose = () => {}) {
  const dialog = document.getElementById(`${name}-dialog`);
  const form = document.getElementById(`${name}-form`);
  const fields = new Fields(form, document.getElementById(`${name}-form-error`));
  let key = null;
  setUpDialog(dialog, () => {
    key = null;
    fields.clear();
    onClose();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.clear();
    const current = key;
    try {
      await busy(form, () => submit(current, fields));
    } catch (error) {
      if (!(error instanceof ApiError)) {
        throw error;
      }
      fields.showApiError(error);
    }
  });
  return {
    dialog,
    form,
    fields,
    /** Open it about `chosen`; focus goes to `returnFocus()` when it closes. */
    open(chosen, returnFocus) {
      key = chosen;
      fields.clear();
      openDialog(dialog, returnFocus);
    },
  };
}
