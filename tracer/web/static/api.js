// The JSON API as the page's modules ask it: one request, its answer or an ApiError
// that says what went wrong in words (an abort is passed on as it is).

export class ApiError extends Error {}

export async function getJson(url, signal) {
  let res;
  try {
    res = await fetch(url, { signal, headers: { Accept: "application/json" } });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Cannot reach the tracer (${err.message}).`);
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(`The tracer answered: ${data?.error || `${res.status} ${res.statusText}`}`);
  return data;
}
