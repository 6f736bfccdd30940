// Allure 3 config for `moe-cts report` (allure awesome --config reports/allurerc.mjs).
// Categories live in categories.json (first match wins); history is kept in reports/history/ across runs
// (`make run` clears allure-results, not the history), so trends show from the second run on.
import { readFileSync } from "node:fs";

const categories = JSON.parse(readFileSync(new URL("./categories.json", import.meta.url), "utf-8"));

export default {
  name: "moe-cts",
  historyPath: "./history/history.jsonl",
  historyLimit: 30,
  categories: { rules: categories },
  plugins: {
    awesome: { options: { singleFile: true, reportName: "moe-cts", groupBy: ["parentSuite", "suite", "subSuite"] } },
  },
};
