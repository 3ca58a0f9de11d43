// The result card: the downloaded zip unpacked in the browser, its stems in order as files to download
// (object URLs, revoked when the result goes away), the player, the words under it, and "Delete my files now".
import { deleteJob } from "./api.js";
import { $ } from "./dom.js";
import { baseName, stemRank } from "./names.js";
import { wireExport } from "./mixdown.js";
import { describe, formatClock, Problem } from "./text.js";
import { readZip, writeZip } from "./zip.js";

const TYPES = { mp3: "audio/mpeg", wav: "audio/wav", flac: "audio/flac" };

export function createResult({ player, screens, log }) {
  let urls = [];
  let songName = "song";
  wireExport({ mixer: () => player.current(), songName: () => songName, log });

  function objectUrl(blob) {
    const address = URL.createObjectURL(blob);
    urls.push(address);
    return address;
  }

  /** Shows the stems of `archive` (the result zip) of `file` separated with `options`. */
  async function show(archive, file, options) {
    player.useNaming(options.naming); // the job the stems were made for names and orders them
    const files = await unpack(archive, options.naming);
    await dispose({ keepLive: true }); // a player that played while it separated hands over to the new one
    const song = baseName(file.name);
    songName = song;
    const stems = files.map((entry) => {
      const name = baseName(entry.name);
      const extension = entry.name.slice(entry.name.lastIndexOf(".") + 1).toLowerCase();
      const blob = new Blob([entry.data], { type: TYPES[extension] || "application/octet-stream" });
      return { name, data: entry.data, blob, fileName: `${song} - ${name}.${extension}`, address: objectUrl(blob) };
    });
    // "Download all": the server's zip names its files vocals.mp3, ...; the page packs the same bytes again
    // under the names single downloads have ("My Song - vocals.mp3"); a stored file's bytes are its
    // download's Blob, held once.
    const renamed = files.map((entry, index) => {
      const packed = entry.method === 0 ? stems[index].blob : entry.packed;
      return { ...entry, packed, name: stems[index].fileName, size: entry.data.length };
    });
    $("download-all").href = objectUrl(writeZip(renamed));
    $("download-all").download = `${song} - stems.zip`;
    const noPlayer = await player.load(stems);
    player.showStems(stems);
    describeResult(stems.length, file, options, noPlayer);
    $("export-mix").hidden = !player.playable;
    $("export-status").textContent = "";
    $("delete").disabled = false;
    $("delete-status").textContent = "";
    screens.enter("result");
    screens.show("result");
    player.render();
    player.draw();
    log("result", { stems: files.map((entry) => entry.name), player: player.playable, noPlayer });
    $("result-title").focus();
  }

  function describeResult(count, file, options, noPlayer) {
    const formatWords = options.format === "mp3" ? `MP3 ${options.bitrate} kbps` : options.format.toUpperCase();
    $("result-note").textContent = player.playable
      ? `${count} stems of ${file.name}, ${formatClock(player.duration)}, ${formatWords}.`
      : `${count} stems of ${file.name}, ${formatWords}. ${noPlayer}`;
    $("result-heading").textContent = player.playable ? "Listen, mix and download" : "Download the stems";
  }

  async function dispose(options = {}) {
    await player.dispose(options);
    for (const address of urls.splice(0)) URL.revokeObjectURL(address);
  }

  /**
   * "Delete my files now": deletes `job()` on the server; `onDeleted(id)` then lets the rest of the page
   * forget it.
   */
  function wireDelete({ job, onDeleted }) {
    $("delete").addEventListener("click", async () => {
      const current = job();
      if (!current) return;
      const button = $("delete");
      button.disabled = true;
      $("delete-status").textContent = "Deleting your files from the server…";
      try {
        const deleted = await deleteJob(current);
        onDeleted(current.id);
        $("delete-status").textContent = deleted
          ? "Your files were deleted from the server. The copies in this page stay until you leave it."
          : "Your files were already gone from the server.";
        log("deleted", { deleted });
      } catch (error) {
        const words = describe(error);
        $("delete-status").textContent = `Your files could not be deleted: ${words.title} ${words.action}`;
        button.disabled = false;
      }
    });
  }

  return { show, dispose, wireDelete };
}

/** The zip's files ({name, data}) in the order stems are listed for the job `naming`. */
async function unpack(archive, naming) {
  let files;
  try {
    files = await readZip(archive);
  } catch (error) {
    throw new Problem("zip", error.message);
  }
  return files.sort((a, b) => stemRank(baseName(a.name), naming) - stemRank(baseName(b.name), naming));
}
