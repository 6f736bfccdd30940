// Allure 3 config for `moe-cts report` (allure awesome --config reports/allurerc.mjs).
// Categories live in categories.json (first match wins). History is passed by `moe-cts report` as
// --history-path reports/history/history.jsonl (outside allure-results, which `make run` clears), so trends
// show from the second run on; it is not set here, where it would resolve against whatever cwd runs allure.
import { readFileSync } from "node:fs";

const categories = JSON.parse(readFileSync(new URL("./categories.json", import.meta.url), "utf-8"));

export default {
  name: "moe-cts",
  historyLimit: 30,
  categories: { rules: categories },
  plugins: {
    awesome: { options: { singleFile: true, reportName: "moe-cts", groupBy: ["parentSuite", "suite", "subSuite"] } },
  },
};
