// The IAM rules editor. It writes the admin API's rule format as it is:
// {effect: allow|deny, status: active|inactive} plus exactly one of
// models: [pattern...], providers: [name...] or
// pricing: {tier?: free|paid, max_input_per_mtok?, max_output_per_mtok?}.
// A PUT replaces the whole list; the server gives every rule a new id.

import { ApiError } from "./api.js";
import { plural } from "./format.js";
import { Fields, keyDialog, wire } from "./forms.js";
import { actionButton } from "./keys.js";

const TYPES = ["models", "providers", "pricing"];
const PRICES = ["max_input_per_mtok", "max_output_per_mtok"];

function typeOf(rule) {
  return TYPES.find((type) => type in rule) || "models";
}

function list(text) {
  return text
    .split(/[,\n]/)
    .map((part) => part.trim())
    .filter((part) => part !== "");
}

/** A rule fieldset's values as the admin API takes them. */
function readRule(fieldset) {
  const value = (field) => fieldset.querySelector(`[data-field="${field}"]`).value;
  const type = value("type");
  const rule = { effect: value("effect"), status: value("status") };
  if (type === "pricing") {
    const pricing = {};
    if (value("pricing.tier")) {
      pricing.tier = value("pricing.tier");
    }
    for (const price of PRICES) {
      const text = value(`pricing.${price}`).trim();
      if (text !== "") {
        pricing[price] = text;
      }
    }
    rule.pricing = pricing;
  } else {
    rule[type] = list(value(type));
  }
  return rule;
}

/** `[2].pricing.max_input_per_mtok` -> [2, "pricing.max_input_per_mtok"]; `[0].models[3]`
 * -> [0, "models"]; `[1]` -> [1, ""] (the rule as a whole). */
function ruleParam(param) {
  const found = /^\[(\d+)\](?:\.(.*))?$/.exec(param || "");
  if (!found) {
    return null;
  }
  return [Number(found[1]), (found[2] || "").replace(/\[\d+\]$/, "")];
}

/** Show a rule's error beside its field, else its part (`pricing`), else on the rule. */
function showRuleError(fieldset, field, error) {
  const fields = new Fields(fieldset, document.getElementById("iam-form-error"));
  fields.show(field, error.detail) ||
    fields.show(field.split(".")[0], error.detail) ||
    fields.show("", error.detail);
  if (fieldset.querySelector("[aria-invalid='true']")) {
    fields.focusFirstInvalid();
  } else {
    fieldset.querySelector("select").focus();
  }
}

export function setUpIam(page) {
  const $ = (id) => document.getElementById(id);
  const rules = $("iam-rules");

  function renumber() {
    [...rules.children].forEach((fieldset, index) => {
      fieldset.querySelector("[data-rule-title]").textContent = `Rule ${index + 1}`;
      fieldset.querySelector("[data-remove-rule]").textContent = `Remove rule ${index + 1}`;
    });
    $("iam-empty").hidden = rules.children.length > 0;
  }

  function addRule(rule) {
    const fieldset = $("rule-template").content.cloneNode(true).querySelector("fieldset");
    wire(fieldset);
    const field = (name) => fieldset.querySelector(`[data-field="${name}"]`);
    const type = typeOf(rule);
    field("effect").value = rule.effect || "allow";
    field("status").value = rule.status || "active";
    field("type").value = type;
    if (type === "pricing") {
      field("pricing.tier").value = rule.pricing.tier || "";
      for (const price of PRICES) {
        field(`pricing.${price}`).value = rule.pricing[price] || "";
      }
    } else if (rule[type]) {
      field(type).value = rule[type].join(", ");
    }
    const showType = () => {
      for (const part of fieldset.querySelectorAll("[data-show]")) {
        part.hidden = part.dataset.show !== field("type").value;
      }
    };
    field("type").addEventListener("change", showType);
    showType();
    fieldset.querySelector("[data-remove-rule]").addEventListener("click", () => {
      const next = fieldset.nextElementSibling || fieldset.previousElementSibling;
      fieldset.remove();
      renumber();
      (next ? next.querySelector("select") : $("iam-add")).focus();
    });
    rules.append(fieldset);
    renumber();
    return fieldset;
  }

  async function submit(key) {
    const body = [...rules.children].map(readRule);
    try {
      await page.admin().putRules(key.id, body);
    } catch (error) {
      const at = error instanceof ApiError ? ruleParam(error.param) : null;
      const fieldset = at === null ? null : rules.children[at[0]];
      if (!fieldset) {
        throw error; // shown for the whole form
      }
      showRuleError(fieldset, at[1], error);
      return;
    }
    await page.refresh();
    dialog.close();
    page.announce(`IAM rules of ${key.name} saved: ${plural(body.length, "rule")}.`);
  }

  const { dialog, open } = keyDialog("iam", submit, () => rules.replaceChildren());

  $("iam-add").addEventListener("click", () => {
    addRule({ effect: "allow", models: [] }).querySelector("select").focus();
  });

  return async (key) => {
    const current = await page.admin().rules(key.id);
    rules.replaceChildren();
    current.forEach(addRule);
    renumber();
    $("iam-title").textContent = `IAM rules of ${key.name}`;
    open(key, () => actionButton(key.id, "iam"));
  };
}
