// The page: choose a galaxy (upload or bundled sample), show the probabilities and a Grad-CAM overlay.
const $ = (id) => document.getElementById(id);
let info = null;
let current = null;
let lastFile = null;

function percent(p) { return (100 * p).toFixed(1) + "%"; }

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function showClass(index) {
  $("overlay").src = current.overlays[index];
  $("cam-class").textContent = current.probabilities[index].class;
  document.querySelectorAll(".bar").forEach((bar, i) => bar.classList.toggle("shown", i === index));
}

function showResult(result) {
  current = result;
  $("top-class").textContent = result.class;
  $("top-class").dataset.classIndex = result.class_index;
  $("top-probability").textContent = percent(result.probability);
  $("source").textContent = result.name + (result.label ? ` (Galaxy Zoo label: ${result.label})` : "");
  $("preprocessing").textContent = result.preprocessing ? `Cutting: ${result.preprocessing}.` : "";
  $("image").src = result.image;
  const bars = $("bars");
  bars.replaceChildren();
  result.probabilities.forEach((entry, i) => {
    const bar = document.createElement("div");
    bar.className = "bar" + (i === result.class_index ? " top" : "");
    bar.dataset.class = entry.class;
    bar.dataset.probability = entry.probability;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.class;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = percent(entry.probability);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(entry.probability);
    bar.append(name, track, value);
    bar.addEventListener("click", () => showClass(i));
    bars.append(bar);
  });
  showClass(result.class_index);
  $("result").hidden = false;
}

function fail(text) {
  $("result").hidden = true;
  showMessage(text);
  document.body.dataset.state = "error";
}

async function request(url, options) {
  showMessage("");
  $("busy").hidden = false;
  document.body.dataset.state = "busy";
  try {
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      fail(`could not reach the server (${error.message}); is it still running?`);
      return;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || body.error) {
      fail((body && body.error) || `the server answered ${response.status} ${response.statusText}`);
      return;
    }
    showResult(body);
    document.body.dataset.state = "done";
  } finally {
    $("busy").hidden = true;
  }
}

function upload(file) {
  if (file.size > info.max_upload_bytes) {
    fail(`${file.name}: the file is larger than ${info.max_upload_bytes / 2 ** 20} MB`);
    return;
  }
  lastFile = file;
  const form = new FormData();
  form.append("image", file);
  form.append("crop_fraction", $("crop-fraction").value || "auto");
  request("/api/classify", { method: "POST", body: form });
}

async function start() {
  const response = await fetch("/api/info");
  info = await response.json().catch(() => null);
  if (!response.ok || !info) {
    fail((info && info.error) || `the server answered ${response.status} ${response.statusText}`);
    return;
  }
  const accuracy = info.test_accuracy == null ? ""
    : `, test accuracy ${percent(info.test_accuracy)} on ${info.test_images} images`;
  $("model-info").textContent = `Run ${info.run}: ${info.model}, ${info.class_names.length} classes${accuracy}`;
  $("max-size").textContent = `${info.max_upload_bytes / 2 ** 20} MB`;
  $("colour-bar").src = info.colour_bar;
  const recipe = info.cutout;
  $("recipe").textContent = recipe
    ? `auto: a ${recipe.raw_size} px survey cutout is cut to its central ${recipe.crop} px, as the training `
      + `images were; a ${info.stored_size} px image is used as is; any other size keeps the same field of view `
      + `(${(recipe.crop / recipe.raw_size).toFixed(3)}). Enter 1 to use the whole image.`
    : "auto: this run records no cutout recipe, so the whole image is used.";
  $("crop-fraction").addEventListener("change", () => { if (lastFile) upload(lastFile); });
  for (const sample of info.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `sample galaxy ${sample.id}: ${sample.label}`;
    button.dataset.sample = sample.id;
    const img = document.createElement("img");
    img.src = `/samples/${sample.id}.png`;
    img.alt = sample.label;
    button.append(img, sample.label);
    button.addEventListener("click", () => request(`/api/samples/${sample.id}`));
    $("samples").append(button);
  }
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) upload(event.target.files[0]);
    event.target.value = "";
  });
  document.body.dataset.state = "ready";
}

start();
