// outpost: a call's audio inside the page. Runs in an AudioContext at 8 kHz (the browser
// resamples the microphone to it): the microphone goes to the main thread in 20 ms frames of
// 16-bit samples (160), and frames from the node are played as they come, after two frames
// (40 ms) are buffered; an underrun plays silence and buffers again.
'use strict';

const FRAME = 160;
const MAX_QUEUED = 25; // 500 ms: beyond it the oldest audio goes, so delay stays bounded

class OutpostVoice extends AudioWorkletProcessor {
  constructor() {
    super();
    this.frame = new Int16Array(FRAME);
    this.fill = 0;
    this.queue = [];
    this.pos = 0;
    this.playing = false;
    this.port.onmessage = (e) => {
      this.queue.push(new Int16Array(e.data));
      if (this.queue.length > MAX_QUEUED) { this.queue.shift(); this.pos = 0; }
    };
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      for (let i = 0; i < input.length; i++) {
        const v = Math.max(-1, Math.min(1, input[i]));
        this.frame[this.fill++] = v < 0 ? v * 0x8000 : v * 0x7fff;
        if (this.fill === FRAME) {
          this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
          this.frame = new Int16Array(FRAME);
          this.fill = 0;
        }
      }
    }
    const output = outputs[0] && outputs[0][0];
    if (output) {
      if (!this.playing && this.queue.length >= 2) this.playing = true;
      for (let i = 0; i < output.length; i++) {
        if (!this.playing || this.queue.length === 0) {
          this.playing = false;
          output[i] = 0;
          continue;
        }
        const f = this.queue[0];
        output[i] = f[this.pos++] / 0x8000;
        if (this.pos >= f.length) { this.queue.shift(); this.pos = 0; }
      }
    }
    return true;
  }
}

registerProcessor('outpost-voice', OutpostVoice);
