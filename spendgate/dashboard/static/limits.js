// The Update limits dialog. Only what changed is sent: an unchanged recurring limit must
// not be re-sent, since a new recurring limit starts a new window.

import { canonicalMoney, fillLimits, keyDialog, mountLimitFields, readLimits } from "./forms.js";
import { actionButton } from "./keys.js";

function sameMoney(a, b) {
  if (a === null || b === null) {
    return a === b;
  }
  const left = canonicalMoney(a);
  return left !== null && left === canonicalMoney(b);
}

function sameRecurring(a, b) {
  if (a === null || b === null) {
    return a === b;
  }
  return sameMoney(a.amount, b.amount) && a.every === b.every && a.unit === b.unit;
}

export function setUpLimits(page) {
  async function submit(key, fields) {
    const limits = readLimits(fields);
    if (limits === null) {
      return;
    }
    const changes = {};
    if (!sameMoney(limits.usage_limit, key.usage_limit ?? null)) {
      changes.usage_limit = limits.usage_limit;
    }
    if (!sameRecurring(limits.recurring_limit, key.recurring_limit ?? null)) {
      changes.recurring_limit = limits.recurring_limit;
    }
    if (Object.keys(changes).length === 0) {
      dialog.close();
      page.announce(`The limits of ${key.name} are unchanged.`);
      return;
    }
    await page.admin().updateKey(key.id, changes);
    await page.refresh();
    dialog.close();
    page.announce(
      "recurring_limit" in changes
        ? `Limits of ${key.name} saved; a new recurring window started now.`
        : `Limits of ${key.name} saved.`,
    );
  }

  const { dialog, form, fields, open } = keyDialog("limits", submit);
  mountLimitFields(form.querySelector(".limit-slot"), "limits");

  return (key) => {
    document.getElementById("limits-title").textContent = `Update limits of ${key.name}`;
    open(key, () => actionButton(key.id, "limits"));
    fillLimits(fields, key);
  };
}
