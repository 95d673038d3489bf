// The Vercel AI SDK against patchbay serve: generateText and streamText with the default
// `openai(model)` provider (the Responses API) and `openai.chat(model)` (Chat Completions).
// Usage: node ai_sdk.mjs BASE_URL API_KEY MODEL; prints one JSON object with what each call got.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey });
const prompt = "Say hello";
const results = {};

async function attempt(name, run) {
  try {
    results[name] = await run();
  } catch (error) {
    results[name] = { error: String(error?.message ?? error), status: error?.statusCode ?? null };
  }
}

for (const [label, languageModel] of [["responses", openai(model)], ["chat", openai.chat(model)]]) {
  await attempt(`${label}.generateText`, async () => {
    const result = await generateText({ model: languageModel, prompt, maxRetries: 0 });
    return { text: result.text, finishReason: result.finishReason, usage: result.usage };
  });
  await attempt(`${label}.streamText`, async () => {
    const result = streamText({ model: languageModel, prompt, maxRetries: 0 });
    const parts = [];
    for await (const part of result.textStream) parts.push(part);
    return { text: parts.join(""), parts: parts.length, finishReason: await result.finishReason };
  });
}
process.stdout.write(JSON.stringify(results));
