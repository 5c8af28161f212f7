// icl-lab report: draws the plotly figures and runs the attention viewer. Data comes from the
// JSON block #report-data; attention patterns are uint8 (x 255), base64-encoded, laid out as
// [step, sample, layer, head, query_pos, key_pos].
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const config = { responsive: true, displaylogo: false };

  for (const [id, fig] of Object.entries(data.figures)) {
    const el = document.getElementById(id);
    if (el) Plotly.newPlot(el, fig.data, fig.layout, config);
  }

  const runs = data.attention;
  const viewer = document.getElementById("attn-viewer");
  if (!viewer || runs.length === 0) return;
  for (const run of runs) {
    const bytes = atob(run.patterns);
    run.values = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) run.values[i] = bytes.charCodeAt(i);
  }
  const el = (id) => document.getElementById(id);
  const runSel = el("attn-run"), headSel = el("attn-head"), sampleSel = el("attn-sample");
  const slider = el("attn-step"), stepLabel = el("attn-step-label"), strip = el("attn-tokens");
  runs.forEach((r, i) => runSel.add(new Option(r.name, i)));

  const current = () => runs[+runSel.value];
  function fillRun() {
    const run = current();
    headSel.innerHTML = "";
    for (let l = 0; l < run.n_layers; l++)
      for (let h = 0; h < run.n_heads; h++) {
        const star = run.induction.some(([a, b]) => a === l && b === h) ? " *" : "";
        headSel.add(new Option(`L${l}H${h}${star}`, `${l},${h}`));
      }
    const best = run.induction[0];
    if (best) headSel.value = `${best[0]},${best[1]}`;
    sampleSel.innerHTML = "";
    run.samples.forEach((s, i) => sampleSel.add(new Option(s.name, i)));
    slider.max = run.steps.length - 1;
    slider.value = run.steps.length - 1;
    draw();
  }

  // the [query_pos, key_pos] matrix for the current selection, as floats in [0, 1]
  function pattern() {
    const run = current();
    const [layer, head] = headSel.value.split(",").map(Number);
    const n = run.n_pos, s = +slider.value, sample = +sampleSel.value;
    const offset = ((((s * run.samples.length + sample) * run.n_layers + layer) * run.n_heads + head) * n) * n;
    const rows = [];
    for (let q = 0; q < n; q++) {
      const row = new Array(n);
      for (let k = 0; k < n; k++) row[k] = k <= q ? run.values[offset + q * n + k] / 255 : null;
      rows.push(row);
    }
    return rows;
  }

  function draw() {
    const run = current(), s = +slider.value;
    const tokens = run.samples[+sampleSel.value].tokens;
    stepLabel.textContent = `step ${run.steps[s]} (${run.tokens[s].toLocaleString()} tokens)`;
    const z = pattern();
    viewer.dataset.step = run.steps[s];
    const labels = tokens.map((t, i) => `${i}:${t}`);
    Plotly.react("attn-heatmap", [{
      type: "heatmap", z: z, x: labels, y: labels, colorscale: [[0, "#f7fbff"], [1, "#08306b"]], zmin: 0, zmax: 1,
      hovertemplate: "dest %{y}<br>src %{x}<br>attention %{z:.3f}<extra></extra>",
    }], {
      title: { text: `${headSel.options[headSel.selectedIndex].text} at step ${run.steps[s]}`, font: { size: 13 } },
      margin: { l: 60, r: 10, t: 40, b: 60 }, yaxis: { autorange: "reversed", title: "destination" },
      xaxis: { title: "source", showticklabels: tokens.length <= 40 },
    }, config);
    strip.innerHTML = "";
    tokens.forEach((t, i) => {
      const span = document.createElement("span");
      span.textContent = t;
      span.dataset.pos = i;
      // hovering a destination token shades each source by the attention it receives
      span.addEventListener("mouseenter", () => {
        strip.querySelectorAll("span").forEach((other, k) => {
          const a = k <= i ? z[i][k] : 0;
          other.style.background = `rgba(255,127,14,${a.toFixed(3)})`;
          other.classList.toggle("dest", k === i);
        });
      });
      strip.appendChild(span);
    });
    strip.onmouseleave = () => strip.querySelectorAll("span").forEach((o) => { o.style.background = ""; o.classList.remove("dest"); });
  }

  runSel.addEventListener("change", fillRun);
  [headSel, sampleSel].forEach((e) => e.addEventListener("change", draw));
  slider.addEventListener("input", draw);
  fillRun();
})();
