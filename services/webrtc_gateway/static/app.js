// The page: a plain WebRTC client of the gateway's WHIP-style endpoints (no build step, no library).
// One peer connection: our audio (microphone or a file) goes up, the avatar's video and speech come down.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {            // also read by the browser test
  pc: null, session: null, frames: 0, fpsWindow: [], stats: null, micTrack: null, audioCtx: null,
  width: 0, height: 0, error: "", registration: null, preview: null,
};
const CROP_COLOUR = "#ffd400", FACE_COLOUR = "#30d0ff";
window.ditto = state;

function headers(extra = {}) {
  const key = $("apiKey").value.trim();
  return key ? { ...extra, "x-api-key": key } : extra;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  if (isError) state.error = text;
}

async function failure(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

function rememberAvatar(id) {
  const known = JSON.parse(localStorage.getItem("dittoAvatars") || "[]").filter((x) => x !== id);
  known.unshift(id);
  localStorage.setItem("dittoAvatars", JSON.stringify(known.slice(0, 20)));
  listAvatars();
}

function listAvatars() {
  const list = $("knownAvatars");
  list.replaceChildren(...JSON.parse(localStorage.getItem("dittoAvatars") || "[]").map((id) => {
    const o = document.createElement("option"); o.value = id; return o;
  }));
}

async function uploadPortrait() {
  const file = $("portrait").files[0];
  if (!file) return;
  status(`registering ${file.name} ...`);
  const r = await fetch("/avatars", { method: "POST", headers: headers({ "Content-Type": file.type || "application/octet-stream" }), body: file });
  if (!r.ok) { status(`portrait refused (${r.status}): ${await failure(r)}`, true); return; }
  const avatar = await r.json();
  state.registration = avatar;
  $("avatarId").value = avatar.avatar_id;
  rememberAvatar(avatar.avatar_id);
  status(`avatar ${avatar.avatar_id.slice(0, 12)}... registered, ${avatar.width}x${avatar.height}`);
  await drawFraming(file, avatar);
}

async function firstFrame(file) {
  // an image decodes directly; a video shows its first frame
  try { return await createImageBitmap(file); } catch { /* not an image */ }
  const video = document.createElement("video");
  video.muted = true; video.src = URL.createObjectURL(file);
  await new Promise((resolve, reject) => { video.onloadeddata = resolve; video.onerror = reject; });
  return video;
}

// The uploaded portrait with what registration found drawn over it: the face box and the square the model sees
// (the crop, turned by the face's roll). Coordinates are the registered frame's pixels (avatar.width x height).
async function drawFraming(file, avatar) {
  const face = avatar.face || {};
  const canvas = $("preview"), ctx = canvas.getContext("2d");
  const scale = Math.min(1, 288 / avatar.width);
  canvas.width = Math.round(avatar.width * scale); canvas.height = Math.round(avatar.height * scale);
  try {
    ctx.drawImage(await firstFrame(file), 0, 0, canvas.width, canvas.height);
  } catch {
    ctx.fillStyle = "#333"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  ctx.lineWidth = 2;
  if (face.face_box) {
    const b = face.face_box;
    ctx.strokeStyle = FACE_COLOUR;
    ctx.strokeRect(b.x0 * scale, b.y0 * scale, (b.x1 - b.x0) * scale, (b.y1 - b.y0) * scale);
  }
  if (face.crop && face.crop.size) {
    const c = face.crop;
    ctx.save();
    ctx.translate(c.center_x * scale, c.center_y * scale);
    ctx.rotate(c.rotation_deg * Math.PI / 180);
    ctx.strokeStyle = CROP_COLOUR;
    ctx.strokeRect(-c.size * scale / 2, -c.size * scale / 2, c.size * scale, c.size * scale);
    ctx.restore();
  }
  state.preview = { scale, width: canvas.width, height: canvas.height };
  const eyes = (face.eye_open || []).map((v) => v.toFixed(2)).join(" / ");
  const lines = [`face models: ${face.face_models || "?"}` + (face.faces_found ? `, ${face.faces_found} face(s) found` : ""),
                 eyes ? `eye openness: ${eyes}` : "eye openness: not measured",
                 face.person_matte ? "transparent / green: cut along the person" : "transparent / green: face crop only"];
  const info = $("faceInfo");
  info.replaceChildren(document.createTextNode(lines.join("\n")), ...(face.warnings || []).map((w) => {
    const p = document.createElement("div"); p.className = "warn"; p.textContent = `⚠ ${w}`; return p;
  }));
  $("framing").hidden = false;
}

async function audioTrack() {
  if ($("source").value === "file") {
    const file = $("audioFile").files[0];
    if (!file) throw new Error("choose an audio file, or switch the source to the microphone");
    const ctx = new AudioContext({ sampleRate: 48000 });
    const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.loop = true;
    const out = ctx.createMediaStreamDestination();
    source.connect(out);
    source.start();
    state.audioCtx = ctx;
    return out.stream.getAudioTracks()[0];
  }
  const mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  return mic.getAudioTracks()[0];
}

function gatheringComplete(pc, timeoutMs = 3000) {
  // WHIP without trickle: the offer carries its candidates, so wait for gathering (bounded)
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

function countFrames(video) {
  const tick = (now) => {
    state.frames += 1;
    state.fpsWindow.push(now);
    while (state.fpsWindow.length && now - state.fpsWindow[0] > 2000) state.fpsWindow.shift();
    if (state.pc) video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}

async function start() {
  const avatar = $("avatarId").value.trim();
  if (!avatar) { status("upload a portrait or give an avatar id first", true); return; }
  $("start").disabled = true;
  state.error = ""; state.frames = 0; state.fpsWindow = [];
  try {
    const config = await (await fetch("/config")).json();
    const pc = new RTCPeerConnection({ iceServers: config.ice_servers });
    state.pc = pc;
    state.micTrack = await audioTrack();
    pc.addTransceiver(state.micTrack, { direction: "sendrecv" });
    pc.addTransceiver("video", { direction: "recvonly" });
    const remote = new MediaStream();
    const video = $("video");
    pc.ontrack = (e) => { remote.addTrack(e.track); video.srcObject = remote; };
    pc.onconnectionstatechange = () => {
      if (["failed", "closed"].includes(pc.connectionState)) stop(`connection ${pc.connectionState}`);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const params = new URLSearchParams({ avatar });
    if ($("emotion").value) params.set("emotion", $("emotion").value);
    const r = await fetch(`/whip?${params}`, {
      method: "POST", headers: headers({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
    });
    if (r.status !== 201) throw new Error(`the gateway refused the session (${r.status}): ${await failure(r)}`);
    state.session = r.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    countFrames(video);
    video.onresize = () => { state.width = video.videoWidth; state.height = video.videoHeight; };
    $("stop").disabled = false; $("mic").disabled = false; $("interrupt").disabled = false;
    $("overlay").hidden = false;
    status("connected: speak (or let the file play)");
    state.timer = setInterval(refreshOverlay, 1000);
  } catch (err) {
    status(String(err.message || err), true);
    await stop();
  }
}

async function stop(reason = "stopped") {
  const pc = state.pc, session = state.session;
  state.pc = null; state.session = null;
  clearInterval(state.timer);
  if (session) {
    const r = await fetch(session, { method: "DELETE", headers: headers() });
    if (r.ok) state.stats = await r.json();
  }
  if (pc) { pc.getSenders().forEach((s) => s.track && s.track.stop()); pc.close(); }
  if (state.audioCtx) { state.audioCtx.close(); state.audioCtx = null; }
  $("start").disabled = false; $("stop").disabled = true; $("mic").disabled = true; $("interrupt").disabled = true;
  $("mic").textContent = "Mic off";
  if (!state.error) status(reason);
}

function toggleMic() {
  if (!state.micTrack) return;
  state.micTrack.enabled = !state.micTrack.enabled;  // a disabled track sends silence: the face stays alive
  $("mic").textContent = state.micTrack.enabled ? "Mic off" : "Mic on";
}

async function interrupt() {
  if (!state.session) return;
  const r = await fetch(`${state.session}/interrupt`, { method: "POST", headers: headers() });
  status(r.ok ? "interrupted" : `interrupt failed (${r.status}): ${await failure(r)}`, !r.ok);
}

async function changeEmotion() {
  if (!state.session || !$("emotion").value) return;
  const r = await fetch(`${state.session}/emotion`, {
    method: "POST", headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ emotion: $("emotion").value }),
  });
  if (!r.ok) status(`emotion refused (${r.status}): ${await failure(r)}`, true);
}

async function refreshOverlay() {
  if (!state.session || !state.pc) return;
  const r = await fetch(state.session, { headers: headers() });
  if (r.ok) state.stats = await r.json();
  let rtt = null, jitterMs = null;
  (await state.pc.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
    if (s.type === "inbound-rtp" && s.kind === "video" && s.jitterBufferEmittedCount) {
      jitterMs = 1000 * s.jitterBufferDelay / s.jitterBufferEmittedCount;
    }
  });
  const g = state.stats || {};
  const fps = state.fpsWindow.length / 2;
  const lat = g.latency_ms ? `${(g.latency_ms.last / 1000).toFixed(2)} s` : "-";
  const sync = g.av_sync && g.av_sync.frames ? `${g.av_sync.p50_abs_ms} ms (p95 ${g.av_sync.p95_abs_ms})` : "-";
  $("overlay").textContent =
    `${fps.toFixed(1)} fps  ${$("video").videoWidth}x${$("video").videoHeight} ${g.video_codec || ""}\n` +
    `latency ${lat} avatar` + (rtt !== null ? ` + ${(rtt * 500).toFixed(0)} ms net` : "") +
    (jitterMs !== null ? ` + ${jitterMs.toFixed(0)} ms buffer` : "") + `\nA/V offset ${sync}`;
  if (g.state === "ended") stop(`the session ended: ${g.end_reason}`);
}

async function init() {
  listAvatars();
  const known = JSON.parse(localStorage.getItem("dittoAvatars") || "[]");
  if (known.length) $("avatarId").value = known[0];
  const config = await (await fetch("/config")).json();
  for (const e of config.emotions) {
    const o = document.createElement("option"); o.value = e; o.textContent = e; $("emotion").append(o);
  }
  $("portrait").onchange = uploadPortrait;
  $("source").onchange = () => { $("audioFileLabel").hidden = $("source").value !== "file"; };
  $("start").onclick = start;
  $("stop").onclick = () => stop();
  $("mic").onclick = toggleMic;
  $("interrupt").onclick = interrupt;
  $("emotion").onchange = changeEmotion;
  window.addEventListener("pagehide", () => {  // leaving the page hangs up, so the quota is free at once
    if (state.session) fetch(state.session, { method: "DELETE", headers: headers(), keepalive: true });
  });
}

init();
