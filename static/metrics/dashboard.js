// The staff dashboard: reads the figures (plugins/metrics/dashboard.py) and draws them with the
// vendored Chart.js. No inline script (the site's Content-Security-Policy forbids it).
(function () {
  "use strict";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function labelsOf(seriesList) {
    const all = new Set();
    seriesList.forEach((points) => Object.keys(points).forEach((k) => all.add(k)));
    return Array.from(all).sort();
  }

  function lineChart(id, byName, unit) {
    const names = Object.keys(byName);
    const labels = labelsOf(names.map((n) => byName[n]));
    return new Chart(document.getElementById(id), {
      type: "line",
      data: {
        labels,
        datasets: names.map((name, i) => ({
          label: name,
          data: labels.map((l) => (l in byName[name] ? byName[name][l] : null)),
          borderColor: COLORS[i % COLORS.length],
          backgroundColor: COLORS[i % COLORS.length],
          spanGaps: true,
          tension: 0.2,
        })),
      },
      options: {
        animation: false,
        responsive: true,
        scales: { y: { beginAtZero: true, title: { display: !!unit, text: unit } } },
      },
    });
  }

  function barChart(id, points, label, color) {
    const labels = Object.keys(points).sort();
    return new Chart(document.getElementById(id), {
      type: "bar",
      data: { labels, datasets: [{ label, data: labels.map((l) => points[l]), backgroundColor: color }] },
      options: { animation: false, responsive: true, scales: { y: { beginAtZero: true } } },
    });
  }

  function draw(data) {
    lineChart("chart-tps", data.tokens_per_second, "tokens/s");
    lineChart("chart-ttft", data.ttft_seconds, "seconds");
    barChart("chart-messages", data.messages_per_day, "answers", COLORS[0]);
    const errors = {};
    Object.keys(data.error_rate).forEach((d) => { errors[d] = Math.round(data.error_rate[d] * 1000) / 10; });
    barChart("chart-errors", errors, "% failed or interrupted", COLORS[1]);
    const mean = {}, p90 = {};
    Object.keys(data.queue_wait_seconds).forEach((b) => {
      mean[b] = data.queue_wait_seconds[b].mean;
      p90[b] = data.queue_wait_seconds[b].p90;
    });
    lineChart("chart-queue", { mean, "90th percentile": p90 }, "seconds");
    new Chart(document.getElementById("chart-users"), {
      type: "bar",
      data: {
        labels: data.top_users.map((u) => u.user),
        datasets: [{ label: "tokens", data: data.top_users.map((u) => u.tokens), backgroundColor: COLORS[2] }],
      },
      options: { animation: false, responsive: true, indexAxis: "y" },
    });
    const body = document.querySelector("#top-users tbody");
    data.top_users.forEach((u) => {
      const row = body.insertRow();
      [u.user, u.tokens.toLocaleString(), u.requests.toLocaleString()].forEach((v) => {
        row.insertCell().textContent = v;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("metrics-dashboard");
    const status = document.getElementById("dashboard-status");
    fetch(root.dataset.source, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then((data) => {
        draw(data);
        status.textContent = `Last ${data.days} day${data.days === 1 ? "" : "s"}, per ${data.bucket} (UTC).`;
        root.dataset.ready = "1";
      })
      .catch((err) => { status.textContent = "Could not load the figures: " + err.message; root.dataset.ready = "error"; });
  });
})();
