// MVBoost for ComfyUI frontend extension:
//  * the upload button of "MVBoost: Load Gaussians";
//  * the saved path of "MVBoost: Save Gaussians", shown in a read-only "saved_path" widget after each run (its
//    progress text is cleared by newer frontends when the job ends; core frontends do not show ui "text").
//
// ComfyUI frontends build upload buttons only for image / video / audio inputs (image_upload, video_upload,
// audio_upload; a "file_upload" flag is not read by any of them), so this adds one: it picks a .ply / .splat / .spz
// / .sog / .glb
// file, sends it through ComfyUI's own upload route (/upload/image stores any file in the input folder), adds the
// name to the node's "file" list and selects it. Works with the legacy and current frontend packages alike (it only
// uses app.registerExtension, api.fetchApi and node.addWidget).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_CLASS = "MVBoostLoadGaussians";
const ACCEPT = ".ply,.splat,.spz,.sog,.glb";

async function uploadGaussians(file) {
  const body = new FormData();
  body.append("image", file, file.name); // the route's field name; the file type is not checked
  body.append("type", "input");
  const resp = await api.fetchApi("/upload/image", { method: "POST", body });
  if (resp.status !== 200) {
    throw new Error(`upload of ${file.name} failed: ${resp.status} ${resp.statusText}`);
  }
  const data = await resp.json();
  return data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
}

function addUploadButton(node) {
  const fileWidget = node.widgets?.find((w) => w.name === "file");
  if (!fileWidget || node.widgets.some((w) => w.name === "upload")) return;
  const input = document.createElement("input");
  Object.assign(input, { type: "file", accept: ACCEPT });
  input.style.display = "none";
  input.dataset.mvboostUpload = String(node.id);
  input.onchange = async () => {
    const file = input.files?.[0];
    input.value = "";
    if (!file) return;
    try {
      const path = await uploadGaussians(file);
      const values = fileWidget.options?.values;
      if (Array.isArray(values) && !values.includes(path)) values.push(path);
      fileWidget.value = path;
      fileWidget.callback?.(path);
      node.setDirtyCanvas?.(true, true);
    } catch (err) {
      console.error("[MVBoost]", err);
      window.alert?.(String(err));
    }
  };
  document.body.append(input);
  const button = node.addWidget("button", "upload", "gaussians", () => input.click(), { serialize: false });
  button.label = "choose file to upload";
  button.serialize = false;
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    input.remove();
    return onRemoved?.apply(this, arguments);
  };
}

const SAVE_CLASS = "MVBoostSaveGaussians";

function showSavedPath(node, path) {
  let widget = node.widgets?.find((w) => w.name === "saved_path");
  if (!widget) {
    widget = node.addWidget("text", "saved_path", "", () => {}, { serialize: false });
    widget.serialize = false;
    widget.disabled = true;
  }
  widget.value = path;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "MVBoost.SaveGaussiansPath",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== SAVE_CLASS) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const path = message?.mvboost_saved?.[0];
      if (path) showSavedPath(this, String(path));
      return result;
    };
  },
});

app.registerExtension({
  name: "MVBoost.LoadGaussiansUpload",
  nodeCreated(node) {
    const cls = node.comfyClass ?? node.constructor?.comfyClass ?? node.type;
    if (cls === NODE_CLASS) addUploadButton(node);
  },
});
